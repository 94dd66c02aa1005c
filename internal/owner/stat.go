package owner

import (
	"bytes"
	"errors"
	"strconv"
)

// Stat is what the probe reads from /proc/<pid>/stat.
type Stat struct {
	State   byte   // field 3
	Threads int    // field 20
	Start   uint64 // field 22, clock ticks after boot
}

// ErrStatFormat reports a /proc/<pid>/stat line that does not parse.
var ErrStatFormat = errors.New("owner: malformed /proc/<pid>/stat")

// ParseStat parses the contents of /proc/<pid>/stat. The second field, the
// command name, is in parentheses and may itself contain spaces and
// parentheses, so the fields after it are counted from the last ')'.
func ParseStat(b []byte) (Stat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || bytes.IndexByte(b, '(') < 0 || bytes.IndexByte(b, '(') > i {
		return Stat{}, ErrStatFormat
	}
	// After ") " come fields 3, 4, …: state is the first, the thread
	// count the 18th, the start time the 20th.
	f := bytes.Fields(b[i+1:])
	if len(f) < 20 || len(f[0]) != 1 || !isLetter(f[0][0]) {
		return Stat{}, ErrStatFormat
	}
	threads, err := strconv.Atoi(string(f[17]))
	if err != nil {
		return Stat{}, ErrStatFormat
	}
	start, err := strconv.ParseUint(string(f[19]), 10, 64)
	if err != nil {
		return Stat{}, ErrStatFormat
	}
	return Stat{State: f[0][0], Threads: threads, Start: start}, nil
}

// isLetter: a process state is one letter (R, S, D, Z, T, t, X, I, …).
func isLetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

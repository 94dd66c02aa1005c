package proctest

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// StatusValue returns the number after field (such as "Threads:") in a
// /proc status file, and whether the file could be read and had it (a task
// that ended has none).
func StatusValue(path, field string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			return n, err == nil
		}
	}
	return 0, false
}

// Threads returns how many threads this process has.
func Threads(t *testing.T) int {
	t.Helper()
	n, ok := StatusValue("/proc/self/status", "Threads:")
	if !ok {
		t.Fatal("no Threads: in /proc/self/status")
	}
	return n
}

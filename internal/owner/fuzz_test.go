//go:build linux

package owner

import (
	"fmt"
	"strings"
	"testing"
)

// FuzzParseStat: any input parses or fails with ErrStatFormat, never panics.
func FuzzParseStat(f *testing.F) {
	f.Add([]byte("1857 (cat) R 1853 1853 1029 0 -1 4194304 122 0 1 0 0 0 0 0 20 0 1 0 216178 3133440"))
	f.Add([]byte("42 (a) b) c) Z 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5"))
	f.Add([]byte("42 ( R 1"))
	f.Add([]byte(")("))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := ParseStat(b)
		if err != nil && err != ErrStatFormat {
			t.Fatalf("unexpected error %v", err)
		}
		if err == nil && st.State == 0 {
			t.Fatal("parsed without a state")
		}
	})
}

// FuzzParseStatComm: whatever the command name (spaces, parentheses, the
// kernel allows nearly anything), the fields after it are found.
func FuzzParseStatComm(f *testing.F) {
	f.Add("cat", byte('S'), uint64(216178), 3)
	f.Add("a) b (c", byte('Z'), uint64(1), 1)
	f.Add(") ) )", byte('T'), uint64(1<<40), 12)
	f.Add("", byte('R'), uint64(0), 1)
	f.Fuzz(func(t *testing.T, comm string, state byte, start uint64, threads int) {
		if strings.ContainsAny(comm, "\x00\n") || len(comm) > 64 || !isLetter(state) || threads < 0 {
			t.Skip()
		}
		line := fmt.Sprintf("4242 (%s) %c 1 1 1 0 -1 4194304 122 0 1 0 0 0 0 0 20 0 %d 0 %d 3133440 395\n", comm, state, threads, start)
		st, err := ParseStat([]byte(line))
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if st.State != state || st.Start != start || st.Threads != threads {
			t.Fatalf("%q: got %+v", line, st)
		}
	})
}

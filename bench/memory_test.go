//go:build linux

package bench

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/shm"
)

// BenchmarkLockMemory: what the locks of one process cost in memory, for
// 10,000 locks in a 1 GiB region, packed (one line after another) or spread
// (one every 104 KiB, each on a page of its own), in each mode. private-KiB
// is the growth of this process's anonymous memory, its own alone (robust
// mode's list entries live in a private shadow: a page for every page that
// holds a lock the process made; the Go heap grows a little with the locks
// too); shared-KiB is what the region file holds, the same memory for every
// process that maps it. One op is one process making all the locks.
func BenchmarkLockMemory(b *testing.B) {
	const locks, size = 10_000, 1 << 30
	for _, mode := range []shm.Mode{shm.ModeProbe, shm.ModeRobust} {
		for _, layout := range []string{"packed", "spread"} {
			b.Run(fmt.Sprintf("%v/%s", mode, layout), func(b *testing.B) {
				stride := shm.LineSize
				if layout == "spread" {
					stride = size / locks / shm.LineSize * shm.LineSize
				}
				var private, shared int64
				for range b.N {
					name := fmt.Sprintf("shmlock-bench-mem-%d", os.Getpid())
					shm.Remove(name)
					r, err := shm.Open(name, shm.Options{Size: size, Mode: mode})
					if err != nil {
						b.Fatal(err)
					}
					before := privateKiB(b)
					for i := range locks {
						if _, err := shmlock.New(r, i*stride); err != nil {
							b.Fatal(err)
						}
					}
					private += privateKiB(b) - before
					fi, _ := os.Stat(r.Path())
					shared += fileKiB(fi)
					r.Close()
					shm.Remove(name)
				}
				b.ReportMetric(float64(private)/float64(b.N), "private-KiB")
				b.ReportMetric(float64(shared)/float64(b.N), "shared-KiB")
			})
		}
	}
}

// privateKiB is this process's anonymous memory, from /proc/self/smaps_rollup.
func privateKiB(b *testing.B) int64 {
	s, err := os.ReadFile("/proc/self/smaps_rollup")
	if err != nil {
		b.Skip(err)
	}
	var kib int64
	for _, l := range strings.Split(string(s), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == "Anonymous:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			kib += n
		}
	}
	return kib
}

// fileKiB is the storage a file holds, in KiB.
func fileKiB(fi os.FileInfo) int64 { return fi.Sys().(*syscall.Stat_t).Blocks / 2 }

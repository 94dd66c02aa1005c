//go:build linux

package cache_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shmlock/shmlock/examples/cache"
	"github.com/shmlock/shmlock/internal/proctest"
)

// The benchmark children's start line, in the control region.
const (
	bReady = cReads // children ready
	bGo    = cStop  // nonzero: start
)

// BenchmarkCache: Get (a hit) and Set by one goroutine, and across processes:
// procs=N child processes share b.N Gets or Sets of random keys, started
// together; reports the operations per second of all of them.
func BenchmarkCache(b *testing.B) {
	cpath := filepath.Join(b.TempDir(), "cache")
	c, err := cache.Open(cpath, opts)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	for k := range uint64(keys) {
		c.Set(ctx, key(k), value(k, 1), 0)
	}
	b.Run("get", func(b *testing.B) {
		buf := make([]byte, 0, opts.MaxValue)
		k := key(7)
		c.Set(ctx, k, value(7, 1), 0)
		for b.Loop() {
			if _, ok := c.Get(k, buf[:0]); !ok {
				b.Fatal("miss")
			}
		}
	})
	b.Run("set", func(b *testing.B) {
		k, v := key(7), value(7, 1)
		for b.Loop() {
			c.Set(ctx, k, v, 0)
		}
	})
	for _, op := range []string{"get", "set"} {
		for _, n := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/procs=%d", op, n), func(b *testing.B) {
				xpath := filepath.Join(b.TempDir(), "ctl")
				x, err := openCtl(xpath)
				if err != nil {
					b.Fatal(err)
				}
				defer x.r.Close()
				per := max(b.N/n, 1)
				var cmds []*exec.Cmd
				for range n {
					cmd := proctest.Command("bench", cpath, xpath, op, strconv.Itoa(per))
					cmd.Stderr = os.Stderr
					if err := cmd.Start(); err != nil {
						b.Fatal(err)
					}
					cmds = append(cmds, cmd)
				}
				for atomic.LoadUint64(&x.w[bReady]) < uint64(n) {
					time.Sleep(50 * time.Microsecond)
				}
				start := time.Now()
				atomic.StoreUint64(&x.w[bGo], 1)
				for _, cmd := range cmds {
					if err := cmd.Wait(); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(n*per)/time.Since(start).Seconds(), "ops/s")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}

// benchChild: args cache, ctl, op (get or set), count.
func benchChild(args []string) int {
	c, x, err := openChild(args)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	n, _ := strconv.Atoi(args[3])
	vals := make([][]byte, keys)
	for k := range vals {
		vals[k] = value(uint64(k), 2)
	}
	atomic.AddUint64(&x.w[bReady], 1)
	for atomic.LoadUint64(&x.w[bGo]) == 0 {
		time.Sleep(10 * time.Microsecond)
	}
	ctx := context.Background()
	buf := make([]byte, 0, opts.MaxValue)
	for range n {
		k := rand.Uint64N(keys)
		if args[2] == "get" {
			c.Get(key(k), buf[:0])
		} else if err := c.Set(ctx, key(k), vals[k], 0); err != nil {
			fmt.Println(err)
			return 1
		}
	}
	return 0
}

//go:build linux

package cache_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shmlock/shmlock/examples/cache"
	"github.com/shmlock/shmlock/internal/proctest"
)

// The benchmarks' caches: 16-byte keys, 10,000 of them, in a cache of
// 16,384 entries, with values of 64 bytes or 1 KiB.
const benchKeys = 10000

func benchOpts(value int) cache.Options {
	return cache.Options{Capacity: 16384, MaxKey: 16, MaxValue: value}
}

func benchKey(k int) []byte { return fmt.Appendf(nil, "key-%012d", k) }

// benchValue is value bytes that name key k.
func benchValue(k, n int) []byte {
	v := make([]byte, n)
	binary.LittleEndian.PutUint64(v, uint64(k))
	return v
}

// fill sets every benchmark key.
func fill(b *testing.B, c *cache.Cache, value int) {
	for k := range benchKeys {
		if err := c.Set(context.Background(), benchKey(k), benchValue(k, value), 0); err != nil {
			b.Fatal(err)
		}
	}
}

// present returns the benchmark keys the cache holds: all but the few whose
// bucket had more than Ways of them.
func present(c *cache.Cache) [][]byte {
	var keys [][]byte
	for k := range benchKeys {
		if _, ok := c.Get(benchKey(k), nil); ok {
			keys = append(keys, benchKey(k))
		}
	}
	return keys
}

// order is a fixed random sequence of key numbers, so that the loop draws
// no random numbers.
func order(n int) []int {
	r := rand.New(rand.NewPCG(1, 2))
	o := make([]int, n)
	for i := range o {
		o[i] = r.IntN(benchKeys)
	}
	return o
}

// BenchmarkCache: one goroutine's Get (every key is there: hits) and Set
// of random keys, with values of 64 bytes and of 1 KiB; and Get of one key,
// whose lines stay in the CPU's cache.
func BenchmarkCache(b *testing.B) {
	for _, value := range []int{64, 1024} {
		c, err := cache.Open(filepath.Join(b.TempDir(), "cache"), benchOpts(value))
		if err != nil {
			b.Fatal(err)
		}
		fill(b, c, value)
		keys := present(c)
		seq := order(1 << 16)
		name := fmt.Sprintf("value=%dB", value)
		b.Run("get/"+name, func(b *testing.B) {
			buf := make([]byte, 0, value)
			i := 0
			for b.Loop() {
				if _, ok := c.Get(keys[seq[i&(1<<16-1)]%len(keys)], buf[:0]); !ok {
					b.Fatal("miss")
				}
				i++
			}
		})
		b.Run("get-one-key/"+name, func(b *testing.B) {
			buf := make([]byte, 0, value)
			for b.Loop() {
				if _, ok := c.Get(keys[0], buf[:0]); !ok {
					b.Fatal("miss")
				}
			}
		})
		b.Run("set/"+name, func(b *testing.B) {
			v := benchValue(7, value)
			ctx := context.Background()
			i := 0
			for b.Loop() {
				c.Set(ctx, keys[seq[i&(1<<16-1)]%len(keys)], v, 0)
				i++
			}
		})
		c.Close()
	}
}

// BenchmarkGoMap is BenchmarkCache for what one process would use
// instead: a Go map under a sync.RWMutex, whose Get copies the value out
// and whose Set copies it into the key's buffer. It pays for the same memory
// misses, and for no sharing between processes.
func BenchmarkGoMap(b *testing.B) {
	for _, value := range []int{64, 1024} {
		var mu sync.RWMutex
		m := make(map[string][]byte, benchKeys)
		for k := range benchKeys {
			m[string(benchKey(k))] = benchValue(k, value)
		}
		keys := make([][]byte, benchKeys)
		for k := range keys {
			keys[k] = benchKey(k)
		}
		get := func(key, dst []byte) ([]byte, bool) {
			mu.RLock()
			v, ok := m[string(key)]
			dst = append(dst, v...)
			mu.RUnlock()
			return dst, ok
		}
		seq := order(1 << 16)
		name := fmt.Sprintf("value=%dB", value)
		b.Run("get/"+name, func(b *testing.B) {
			buf := make([]byte, 0, value)
			i := 0
			for b.Loop() {
				if _, ok := get(keys[seq[i&(1<<16-1)]], buf[:0]); !ok {
					b.Fatal("miss")
				}
				i++
			}
		})
		b.Run("get-one-key/"+name, func(b *testing.B) {
			buf := make([]byte, 0, value)
			for b.Loop() {
				if _, ok := get(keys[0], buf[:0]); !ok {
					b.Fatal("miss")
				}
			}
		})
		b.Run("set/"+name, func(b *testing.B) {
			v := benchValue(7, value)
			i := 0
			for b.Loop() {
				key := keys[seq[i&(1<<16-1)]]
				mu.Lock()
				copy(m[string(key)], v)
				mu.Unlock()
				i++
			}
		})
	}
}

// BenchmarkGoMapGoroutines is BenchmarkCacheProcs for one process's
// goroutines on a Go map of 64 shards, each under a sync.RWMutex of its own
// line: what two writers of random keys in shared memory cost each other
// (their locks' and values' lines move between the cores) with no
// processes and no robustness in it.
func BenchmarkGoMapGoroutines(b *testing.B) {
	type shard struct {
		mu sync.RWMutex
		m  map[string][]byte
		_  [64]byte
	}
	shards := make([]shard, 64)
	keys := make([][]byte, benchKeys)
	for k := range keys {
		keys[k] = benchKey(k)
		sh := &shards[k%64]
		if sh.m == nil {
			sh.m = make(map[string][]byte)
		}
		sh.m[string(keys[k])] = benchValue(k, 64)
	}
	for _, op := range []string{"get", "set"} {
		for _, n := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/goroutines=%d", op, n), func(b *testing.B) {
				per := max(b.N/n, 1)
				seqs := make([][]int, n)
				for g := range seqs {
					seqs[g] = order(1 << 16)
					rand.New(rand.NewPCG(uint64(g), 9)).Shuffle(1<<16, func(i, j int) { seqs[g][i], seqs[g][j] = seqs[g][j], seqs[g][i] })
				}
				var wg sync.WaitGroup
				b.ResetTimer()
				start := time.Now()
				for _, seq := range seqs {
					wg.Add(1)
					go func() {
						defer wg.Done()
						v := benchValue(1, 64)
						buf := make([]byte, 0, 64)
						for i := range per {
							k := seq[i&(1<<16-1)]
							sh := &shards[k%64]
							if op == "get" {
								sh.mu.RLock()
								buf = append(buf[:0], sh.m[string(keys[k])]...)
								sh.mu.RUnlock()
							} else {
								sh.mu.Lock()
								copy(sh.m[string(keys[k])], v)
								sh.mu.Unlock()
							}
						}
					}()
				}
				wg.Wait()
				b.ReportMetric(float64(n*per)/time.Since(start).Seconds(), "ops/s")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}

// BenchmarkCacheProcs: procs child processes share b.N Gets or Sets of
// random keys (64-byte values), started together; reports the operations a
// second of all of them. On this kind of machine compare procs=2 with
// procs=1: what a second process adds.
func BenchmarkCacheProcs(b *testing.B) {
	cpath := filepath.Join(b.TempDir(), "cache")
	c, err := cache.Open(cpath, benchOpts(64))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	fill(b, c, 64)
	for _, op := range []string{"get", "set"} {
		for _, n := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/procs=%d", op, n), func(b *testing.B) {
				runProcs(b, n, func(per int) []string { return []string{cpath, op, "64", strconv.Itoa(per)} })
			})
		}
	}
}

// runProcs starts n bench children, each with the arguments args gives for
// its share of b.N, lets them go together, and reports the operations a
// second of all of them, from the start line to the last one's end.
func runProcs(b *testing.B, n int, args func(per int) []string) {
	xpath := filepath.Join(b.TempDir(), "ctl")
	x, err := openCtl(xpath)
	if err != nil {
		b.Fatal(err)
	}
	defer x.r.Close()
	per := max(b.N/n, 1)
	var cmds []*exec.Cmd
	for range n {
		cmd := proctest.Command("bench", append([]string{xpath}, args(per)...)...)
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
}

// The benchmark children's start line, in the control region.
const (
	bReady = cReads // children ready
	bGo    = cStop  // nonzero: start
)

// benchChild: args ctl, then cache, op, value bytes, count (get, set), or
// cache, "warp", seed, count (warp_cache's get-or-set). It opens
// everything and draws its keys first, then waits for the start line.
func benchChild(args []string) int {
	x, err := openCtl(args[0])
	if err != nil {
		fmt.Println(err)
		return 1
	}
	var run func() error
	switch args[2] {
	case "warp":
		run, err = warpRun(args[1], args[3], args[4])
	default:
		run, err = opsRun(args[1], args[2], args[3], args[4])
	}
	if err != nil {
		fmt.Println(err)
		return 1
	}
	atomic.AddUint64(&x.w[bReady], 1)
	for atomic.LoadUint64(&x.w[bGo]) == 0 {
		time.Sleep(10 * time.Microsecond)
	}
	if err := run(); err != nil {
		fmt.Println(err)
		return 1
	}
	return 0
}

func opsRun(path, op, value, count string) (func() error, error) {
	vb, _ := strconv.Atoi(value)
	n, _ := strconv.Atoi(count)
	c, err := cache.Open(path, benchOpts(vb))
	if err != nil {
		return nil, err
	}
	keys := present(c)
	seq := order(1 << 16)
	rand.Shuffle(len(seq), func(i, j int) { seq[i], seq[j] = seq[j], seq[i] })
	v := benchValue(1, vb)
	return func() error {
		ctx := context.Background()
		buf := make([]byte, 0, vb)
		for i := range n {
			k := keys[seq[i&(1<<16-1)]%len(keys)]
			if op == "get" {
				if _, ok := c.Get(k, buf[:0]); !ok {
					return fmt.Errorf("miss")
				}
			} else if err := c.Set(ctx, k, v, 0); err != nil {
				return err
			}
		}
		return nil
	}, nil
}

// warp_cache's published multi-process workload: a cache of 256 entries,
// keys drawn from 2,000 with weights 1/(rank+1) (Zipf, s = 1), each drawn
// before the clock starts; each operation a get-or-set: Get, and on a miss
// Set. The key is the number's 8 bytes, and so is the value.
const (
	warpCapacity = 256
	warpKeys     = 2000
)

func warpOpts() cache.Options { return cache.Options{Capacity: warpCapacity, MaxKey: 8, MaxValue: 8} }

// warpDraw draws n key numbers as warp_cache's zipf_keys does
// (random.choices over the weights 1/(i+1)).
func warpDraw(seed uint64, n int) []uint64 {
	cdf := make([]float64, warpKeys)
	sum := 0.0
	for i := range cdf {
		sum += 1 / float64(i+1)
		cdf[i] = sum
	}
	r := rand.New(rand.NewPCG(seed, 42))
	ks := make([]uint64, n)
	for i := range ks {
		ks[i] = uint64(sort.SearchFloat64s(cdf, r.Float64()*sum))
	}
	return ks
}

func warpRun(path, seed, count string) (func() error, error) {
	s, _ := strconv.ParseUint(seed, 10, 64)
	n, _ := strconv.Atoi(count)
	c, err := cache.Open(path, warpOpts())
	if err != nil {
		return nil, err
	}
	ks := warpDraw(s, n)
	return func() error {
		ctx := context.Background()
		var key [8]byte
		buf := make([]byte, 0, 8)
		for _, k := range ks {
			binary.LittleEndian.PutUint64(key[:], k)
			if _, ok := c.Get(key[:], buf[:0]); !ok {
				if err := c.Set(ctx, key[:], key[:], 0); err != nil {
					return err
				}
			}
		}
		return nil
	}, nil
}

// BenchmarkWarp: warp_cache's workload at 1, 2, 4 and 8 processes sharing
// b.N operations; reports their aggregate operations a second, and the hit
// ratio.
func BenchmarkWarp(b *testing.B) {
	for _, n := range []int{1, 2, 4, 8} {
		b.Run(fmt.Sprintf("procs=%d", n), func(b *testing.B) {
			cpath := filepath.Join(b.TempDir(), "cache")
			c, err := cache.Open(cpath, warpOpts())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			seed := 0
			runProcs(b, n, func(per int) []string {
				seed++
				return []string{cpath, "warp", strconv.Itoa(41 + seed), strconv.Itoa(per)}
			})
			if st := c.Stats(); st.Hits+st.Misses > 0 {
				b.ReportMetric(float64(st.Hits)/float64(st.Hits+st.Misses), "hit-ratio")
			}
		})
	}
}

// BenchmarkLatency: this process does b.N operations at a fixed rate, a
// Get in 10 a Set, of random keys (64-byte values), while two other
// processes Set random keys of the cache at a fixed rate each. Each
// operation's latency runs from when it was due, not from when it began, so
// that a stall counts for every operation it delayed. Reports p50, p99 and
// p99.9 of Gets and of Sets, in ns: of the cache's (impl=cache), and of a Go
// map's under a sync.RWMutex (impl=gomap), under the same writers, so that
// what the machine adds (its scheduler, its other tenants) shows in both.
func BenchmarkLatency(b *testing.B) {
	cpath := filepath.Join(b.TempDir(), "cache")
	c, err := cache.Open(cpath, benchOpts(64))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	fill(b, c, 64)
	keys := make([][]byte, benchKeys)
	for k := range keys {
		keys[k] = benchKey(k)
	}
	v := benchValue(3, 64)
	ctx := context.Background()
	buf := make([]byte, 0, 64)
	b.Run("impl=cache", func(b *testing.B) {
		paced(b, cpath, func(k int, set bool) {
			if set {
				c.Set(ctx, keys[k], v, 0)
			} else {
				c.Get(keys[k], buf[:0])
			}
		})
	})
	var mu sync.RWMutex
	m := make(map[string][]byte, benchKeys)
	for k := range benchKeys {
		m[string(benchKey(k))] = benchValue(k, 64)
	}
	b.Run("impl=gomap", func(b *testing.B) {
		paced(b, cpath, func(k int, set bool) {
			if set {
				mu.Lock()
				copy(m[string(keys[k])], v)
				mu.Unlock()
			} else {
				mu.RLock()
				buf = append(buf[:0], m[string(keys[k])]...)
				mu.RUnlock()
			}
		})
	})
}

// paced runs b.N operations op(key, set) at a fixed rate, one in 10 a Set,
// while two paced-writer processes Set keys of the cache at cpath, and
// reports the percentiles of their latencies from when each was due.
func paced(b *testing.B, cpath string, op func(k int, set bool)) {
	const rate = 100_000 // operations a second, here
	xpath := filepath.Join(b.TempDir(), "ctl")
	x, err := openCtl(xpath)
	if err != nil {
		b.Fatal(err)
	}
	defer x.r.Close()
	h := proctest.New(b, 10*time.Minute)
	var ws []*proctest.Child
	for range 2 {
		ws = append(ws, h.Spawn("paced-writer", cpath, xpath))
	}
	seq := order(1 << 16)
	gets, sets := make([]time.Duration, 0, b.N), make([]time.Duration, 0, b.N/10+1)
	time.Sleep(100 * time.Millisecond) // the writers are writing
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		due := start.Add(time.Duration(i) * time.Second / rate)
		for time.Now().Before(due) {
		}
		set := i%10 == 9
		op(seq[i&(1<<16-1)], set)
		if set {
			sets = append(sets, time.Since(due))
		} else {
			gets = append(gets, time.Since(due))
		}
	}
	b.StopTimer()
	atomic.StoreUint64(&x.w[cStop], 1)
	for _, w := range ws {
		w.Wait(b, 10*time.Second)
	}
	for _, s := range []struct {
		name string
		d    []time.Duration
	}{{"get", gets}, {"set", sets}} {
		if len(s.d) == 0 {
			continue
		}
		slices.Sort(s.d)
		for _, q := range []float64{0.5, 0.99, 0.999} {
			b.ReportMetric(float64(s.d[int(q*float64(len(s.d)-1))].Nanoseconds()), s.name+"-p"+strings.TrimPrefix(strconv.FormatFloat(q*100, 'f', -1, 64), "0")+"-ns")
		}
	}
	b.ReportMetric(0, "ns/op")
}

// pacedWriter: args cache, ctl. Sets random keys, 100 every millisecond
// (100,000 a second), until stopped.
func pacedWriter(args []string) int {
	c, err := cache.Open(args[0], benchOpts(64))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	x, err := openCtl(args[1])
	if err != nil {
		fmt.Println(err)
		return 1
	}
	keys := make([][]byte, benchKeys)
	for k := range keys {
		keys[k] = benchKey(k)
	}
	v := benchValue(5, 64)
	ctx := context.Background()
	next := time.Now()
	for !x.stopped() {
		for range 100 {
			if err := c.Set(ctx, keys[rand.IntN(benchKeys)], v, 0); err != nil {
				fmt.Println(err)
				return 1
			}
		}
		next = next.Add(time.Millisecond)
		time.Sleep(time.Until(next))
	}
	return 0
}

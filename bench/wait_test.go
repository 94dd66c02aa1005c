//go:build linux

package bench

import (
	"bytes"
	"flag"
	"fmt"
	"math"
	"math/bits"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The waiting grid: processes × critical sections × peers. Each point runs for
// -wait.dur regardless of b.N (run it with -benchtime=1x).
var (
	waitDur   = flag.Duration("wait.dur", time.Second, "BenchmarkWait: how long each point runs")
	waitProcs = flag.String("wait.procs", "2,8,32,64,128", "BenchmarkWait: process counts")
	waitCS    = flag.String("wait.cs", "empty,1us,10us,100us,sleep1ms", "BenchmarkWait: critical sections")
	waitPeers = flag.String("wait.peers", "", "BenchmarkWait: peers (default: every multi-process one)")
)

// The grid's control words, in the peer region after the pthread mutex.
const gridOff = 256

const (
	gridReady = iota
	gridGo
	gridStop
	gridWords
)

// BenchmarkWait: N processes share one lock; each in a loop takes it, runs the
// critical section around a read-modify-write of the shared counter, and
// releases it, from a common start until a common stop. It reports
// throughput, the CPU and context switches the processes spent per operation,
// the distribution of the time each acquisition waited (p50, p99, max), the
// share of the run during which the lock was held (busy: 100 % is one hold
// after another, no gaps), and the fewest operations any one process did. It
// fails if the counter disagrees with the operations counted.
func BenchmarkWait(b *testing.B) {
	peers := strings.Split(*waitPeers, ",")
	if *waitPeers == "" {
		peers = nil
		for _, p := range peerNames {
			if p != "syncmutex" && p != "naivespin" {
				peers = append(peers, p)
			}
		}
	}
	for _, cs := range strings.Split(*waitCS, ",") {
		for _, ns := range strings.Split(*waitProcs, ",") {
			n, err := strconv.Atoi(ns)
			if err != nil {
				b.Fatal(err)
			}
			for _, name := range peers {
				b.Run(fmt.Sprintf("cs=%s/procs=%d/%s", cs, n, name), func(b *testing.B) { grid(b, name, n, cs) })
			}
		}
	}
}

// gridResult is what one process reports.
type gridResult struct {
	ops, cpu, cs, tcs, held, maxWait uint64
	hist                             [histSize]uint64
}

func grid(b *testing.B, name string, n int, cs string) {
	e := newPeerEnv(b)
	ctl := gridCtl(e)
	cmds := make([]*exec.Cmd, n)
	outs := make([]*bytes.Buffer, n)
	for i := range n {
		cmds[i], outs[i] = gridChild(b, e.path, name, cs)
	}
	deadline := time.Now().Add(time.Minute)
	for atomic.LoadUint64(&ctl[gridReady]) < uint64(n) {
		if time.Now().After(deadline) {
			b.Fatal("the processes did not start")
		}
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	atomic.StoreUint64(&ctl[gridGo], 1)
	time.Sleep(*waitDur)
	atomic.StoreUint64(&ctl[gridStop], 1)
	elapsed := time.Since(start)
	var sum gridResult
	minOps := uint64(math.MaxUint64)
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			b.Fatalf("process %d: %v", i, err)
		}
		r, err := parseGrid(outs[i].String())
		if err != nil {
			b.Fatalf("process %d: %v", i, err)
		}
		sum.ops, sum.cpu, sum.cs, sum.held = sum.ops+r.ops, sum.cpu+r.cpu, sum.cs+r.cs, sum.held+r.held
		sum.tcs += r.tcs
		sum.maxWait = max(sum.maxWait, r.maxWait)
		for j := range r.hist {
			sum.hist[j] += r.hist[j]
		}
		minOps = min(minOps, r.ops)
	}
	if got := atomic.LoadUint64(e.counter); got != sum.ops {
		b.Fatalf("counter %d, operations %d: two holders at once", got, sum.ops)
	}
	ops := float64(sum.ops)
	b.ReportMetric(ops/elapsed.Seconds(), "ops/s")
	b.ReportMetric(float64(sum.cpu)/ops/1e3, "cpu-us/op")
	b.ReportMetric(float64(sum.cs)/ops, "cs/op")
	b.ReportMetric(float64(sum.tcs)/ops, "thread-cs/op")
	b.ReportMetric(histQuantile(&sum.hist, 0.5)/1e3, "p50-us")
	b.ReportMetric(histQuantile(&sum.hist, 0.99)/1e3, "p99-us")
	b.ReportMetric(float64(sum.maxWait)/1e6, "max-ms")
	b.ReportMetric(100*float64(sum.held)/float64(elapsed.Nanoseconds()), "busy-%")
	b.ReportMetric(float64(minOps), "minops")
	b.ReportMetric(float64(elapsed.Nanoseconds())/ops, "ns/op")
}

func gridCtl(e *peerEnv) []uint64 {
	buf, err := e.r.Bytes(gridOff, gridWords*8)
	if err != nil {
		panic(err)
	}
	return unsafe.Slice((*uint64)(unsafe.Pointer(&buf[0])), gridWords)
}

func gridChild(b *testing.B, path, name, cs string) (*exec.Cmd, *bytes.Buffer) {
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), "BENCH_CHILD="+strings.Join([]string{"grid", path, name, cs}, " "))
	out := new(bytes.Buffer)
	cmd.Stdout, cmd.Stderr = out, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	return cmd, out
}

// gridChild's loop: path, peer, critical section.
func gridLoop(args []string) int {
	e, err := openPeerEnv(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	p, err := e.open(args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	section, err := criticalSection(args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctl := gridCtl(e)
	atomic.AddUint64(&ctl[gridReady], 1)
	for atomic.LoadUint64(&ctl[gridGo]) == 0 {
		time.Sleep(100 * time.Microsecond)
	}
	// The loop keeps to one thread, so that its own context switches can
	// be told from those of the runtime's other threads (such as sysmon,
	// which polls every 20 µs while a thread blocks in a system call).
	runtime.LockOSThread()
	var r gridResult
	var before, after, tBefore, tAfter unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &before)
	unix.Getrusage(unix.RUSAGE_THREAD, &tBefore)
	for {
		t0 := nanotime()
		p.Lock()
		t1 := nanotime()
		if atomic.LoadUint64(&ctl[gridStop]) != 0 {
			p.Unlock()
			break
		}
		atomic.StoreUint64(e.counter, atomic.LoadUint64(e.counter)+1)
		section(t1)
		t2 := nanotime()
		p.Unlock()
		wait := uint64(t1 - t0)
		r.ops++
		r.held += uint64(t2 - t1)
		r.maxWait = max(r.maxWait, wait)
		r.hist[histIndex(wait)]++
	}
	unix.Getrusage(unix.RUSAGE_THREAD, &tAfter)
	unix.Getrusage(unix.RUSAGE_SELF, &after)
	r.cpu = uint64(rusageCPU(&after) - rusageCPU(&before))
	r.cs = uint64(after.Nvcsw + after.Nivcsw - before.Nvcsw - before.Nivcsw)
	r.tcs = uint64(tAfter.Nvcsw + tAfter.Nivcsw - tBefore.Nvcsw - tBefore.Nivcsw)
	fmt.Print(formatGrid(&r))
	return 0
}

func criticalSection(cs string) (func(t1 int64), error) {
	switch cs {
	case "empty":
		return func(int64) {}, nil
	case "sleep1ms":
		return func(int64) { time.Sleep(time.Millisecond) }, nil
	}
	d, err := time.ParseDuration(cs)
	if err != nil {
		return nil, fmt.Errorf("critical section %q: empty, sleep1ms or a spin duration", cs)
	}
	return func(t1 int64) {
		for nanotime()-t1 < int64(d) {
		}
	}, nil
}

func formatGrid(r *gridResult) string {
	var s strings.Builder
	fmt.Fprintf(&s, "%d %d %d %d %d %d", r.ops, r.cpu, r.cs, r.tcs, r.held, r.maxWait)
	for i, c := range r.hist {
		if c != 0 {
			fmt.Fprintf(&s, " %d:%d", i, c)
		}
	}
	s.WriteString("\n")
	return s.String()
}

func parseGrid(s string) (*gridResult, error) {
	f := strings.Fields(s)
	if len(f) < 6 {
		return nil, fmt.Errorf("bad report %q", s)
	}
	r := new(gridResult)
	for i, p := range []*uint64{&r.ops, &r.cpu, &r.cs, &r.tcs, &r.held, &r.maxWait} {
		v, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil {
			return nil, err
		}
		*p = v
	}
	for _, kv := range f[6:] {
		k, v, _ := strings.Cut(kv, ":")
		i, err1 := strconv.Atoi(k)
		c, err2 := strconv.ParseUint(v, 10, 64)
		if err1 != nil || err2 != nil || i < 0 || i >= histSize {
			return nil, fmt.Errorf("bad bucket %q", kv)
		}
		r.hist[i] = c
	}
	return r, nil
}

// A log-linear histogram of nanoseconds: 16 buckets per power of two, so a
// quantile is within 1/16 of the true value.
const histSub = 16
const histSize = 64 * histSub

func histIndex(v uint64) int {
	if v < histSub {
		return int(v)
	}
	e := bits.Len64(v) - 5 // v>>e is in [16, 32)
	return (e+1)*histSub + int(v>>e) - histSub
}

// histLow is the smallest value of bucket i.
func histLow(i int) float64 {
	if i < histSub {
		return float64(i)
	}
	e := i/histSub - 1
	return float64(uint64(i%histSub+histSub) << e)
}

func histQuantile(h *[histSize]uint64, q float64) float64 {
	var total uint64
	for _, c := range h {
		total += c
	}
	want := uint64(math.Ceil(q * float64(total)))
	var n uint64
	for i, c := range h {
		if n += c; n >= want && c > 0 {
			return histLow(i)
		}
	}
	return 0
}

//go:linkname nanotime runtime.nanotime
func nanotime() int64

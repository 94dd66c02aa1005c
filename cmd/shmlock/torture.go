package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/seqlock"
	"github.com/shmlock/shmlock/shm"
)

const tortureWorkerCmd = "torture-worker"

// The torture region: the counter's mutex and journal, a SeqLock and a
// Record, statistics, recovery latencies, per-worker counts.
const (
	tMaxWorkers = 64
	tLatencies  = 4096

	sVerified   = 0  // reads verified
	sTornSeq    = 1  // SeqLock reads accepted but torn
	sTornRec    = 2  // Record reads accepted but torn
	sDirty      = 3  // SeqLock reads told ErrDirty
	sStop       = 4  // nonzero: stop
	sKilledHeld = 5  // CLOCK_MONOTONIC ns of the last kill of a holder
	sLatIdx     = 6  // latencies recorded
	nStats      = 16 // two cache lines
)

type tortureLayout struct {
	size                                             int
	mu, counter, journal, seq, rec, stats, lat, mine int
	objects                                          *shm.Layout
}

func newLayout(size int) tortureLayout {
	l := tortureLayout{size: size, objects: new(shm.Layout)}
	o := l.objects
	l.mu = o.Lock("mutex", shmlock.Size)
	l.counter = o.Data("counter, journal", 16)
	l.journal = l.counter + 8
	l.seq = o.Lock("seqlock", seqlock.SeqLockSize(size))
	l.rec = o.Lock("record", seqlock.RecordSize(size))
	l.stats = o.Data("stats", 8*nStats)
	l.lat = o.Data("latencies", 8*tLatencies)
	l.mine = o.Data("per worker", 8*tMaxWorkers)
	return l
}

type torture struct {
	l     tortureLayout
	r     *shm.Region
	mu    *shmlock.Mutex
	seq   *seqlock.SeqLock
	rec   *seqlock.Record
	stats []uint64
	lat   []uint64
	mine  []uint64
	cj    []uint64 // the counter and the journal
}

// recoveries returns the recoveries counted by the writers' Mutex at off.
func (t *torture) recoveries(off int) uint64 {
	st, err := shmlock.Inspect(t.r, off)
	if err != nil {
		return 0
	}
	return st.Recoveries
}

func openTorture(path string, size int, mode shm.Mode) (*torture, error) {
	l := newLayout(size)
	r, err := shm.Open(path, shm.Options{Layout: l.objects, Slots: tMaxWorkers + 8, Mode: mode})
	if err != nil {
		return nil, err
	}
	t := &torture{l: l, r: r}
	if t.mu, err = shmlock.New(r, l.mu); err == nil {
		if t.seq, err = seqlock.NewSeqLock(r, l.seq, size); err == nil {
			t.rec, err = seqlock.NewRecord(r, l.rec, size)
		}
	}
	for _, w := range []struct {
		s        *[]uint64
		off, len int
	}{{&t.stats, l.stats, nStats}, {&t.lat, l.lat, tLatencies}, {&t.mine, l.mine, tMaxWorkers}, {&t.cj, l.counter, 2}} {
		if err == nil {
			*w.s, err = words(r, w.off, w.len)
		}
	}
	if err != nil {
		r.Close()
		return nil, err
	}
	return t, nil
}

// words returns the n words at off, taken once: Region.Bytes makes system
// calls.
func words(r *shm.Region, off, n int) ([]uint64, error) {
	b, err := r.Bytes(off, 8*n)
	if err != nil {
		return nil, err
	}
	return unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), n), nil
}

func (t *torture) counter() *uint64 { return &t.cj[0] }
func (t *torture) journal() *uint64 { return &t.cj[1] }

func (t *torture) stat(i int) uint64 { return atomic.LoadUint64(&t.stats[i]) }

func (t *torture) committed() uint64 {
	var s uint64
	for i := range t.mine {
		s += atomic.LoadUint64(&t.mine[i])
	}
	return s
}

// record fills a value whose every word derives from word 0, so a value
// made of two writes never verifies.
func record(v uint64, size int) []byte {
	b := make([]byte, size)
	for i := range size / 8 {
		w := v
		if i > 0 {
			w = (v+uint64(i))*0x9E3779B97F4A7C15 ^ uint64(i)<<17
		}
		binary.NativeEndian.PutUint64(b[8*i:], w)
	}
	return b
}

func verifyRecord(b []byte) bool {
	return string(b) == string(record(binary.NativeEndian.Uint64(b), len(b))) || string(b) == string(make([]byte, len(b)))
}

// Report is what a torture run found.
type Report struct {
	Mode           string   `json:"mode"`
	Processes      int      `json:"processes"`
	Seconds        float64  `json:"seconds"`
	RecordBytes    int      `json:"record_bytes"`
	Increments     uint64   `json:"increments"`
	Kills          int      `json:"kills"`
	KillsHolding   int      `json:"kills_while_holding"`
	Recoveries     uint64   `json:"recoveries"`
	RecoveryP50Us  float64  `json:"recovery_p50_us"`
	RecoveryP99Us  float64  `json:"recovery_p99_us"`
	RecoveryMaxUs  float64  `json:"recovery_max_us"`
	ReadsVerified  uint64   `json:"reads_verified"`
	DirtyReadsTold uint64   `json:"dirty_reads_told"`
	TornAccepted   uint64   `json:"torn_values_accepted"`
	LostOrDoubled  int64    `json:"lost_or_double_counted_increments"`
	Violations     []string `json:"violations"`
}

func tortureCmd(args []string) error {
	fs := flag.NewFlagSet("torture", flag.ExitOnError)
	procs := fs.Int("procs", 4, "worker processes")
	duration := fs.Duration("duration", 20*time.Second, "how long to run")
	killRate := fs.Float64("kill-rate", 20, "SIGKILLs per second")
	size := fs.Int("size", 64, "record size in bytes (a positive multiple of 8)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	modeFlag := fs.String("mode", "auto", "locking mode of the region: auto, probe or robust")
	fs.Parse(args)
	mode, err := parseMode(*modeFlag)
	if err != nil {
		return err
	}
	if *procs < 2 || *procs > tMaxWorkers {
		return fmt.Errorf("torture: -procs must be in 2..%d", tMaxWorkers)
	}
	if *size <= 0 || *size%8 != 0 || *killRate <= 0 {
		return errors.New("torture: -size must be a positive multiple of 8 and -kill-rate positive")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	path := filepath.Join(shm.Dir, fmt.Sprintf("shmlock-torture-%d", os.Getpid()))
	os.Remove(path)
	t, err := openTorture(path, *size, mode)
	if err != nil {
		return err
	}
	defer os.Remove(path)
	defer t.r.Close()

	workers := make([]*exec.Cmd, *procs)
	start := func(i int) error {
		cmd := exec.Command(self, tortureWorkerCmd, path, strconv.Itoa(i), strconv.Itoa(*size))
		cmd.Stderr = os.Stderr
		cmd.SysProcAttr = childAttr()
		if err := cmd.Start(); err != nil {
			return err
		}
		workers[i] = cmd
		return nil
	}
	defer func() {
		for _, w := range workers {
			if w != nil && w.ProcessState == nil {
				w.Process.Kill()
				w.Wait()
			}
		}
	}()
	for i := range workers {
		if err := start(i); err != nil {
			return err
		}
	}
	rep := Report{Mode: t.r.Mode().String(), Processes: *procs, RecordBytes: *size}
	begin := time.Now()
	interval := time.Duration(float64(time.Second) / *killRate)
	progress := time.NewTicker(time.Second)
	defer progress.Stop()
	for time.Since(begin) < *duration {
		time.Sleep(time.Duration(rand.Int64N(int64(2 * interval))))
		i := rand.IntN(*procs)
		w := workers[i]
		// Stop it, to know whether it dies holding the lock.
		stop(w.Process)
		if waitStopped(w.Process.Pid) {
			if s := t.mu.Inspect(); s.Held && int(s.Holder.PID) == w.Process.Pid {
				atomic.StoreUint64(&t.stats[sKilledHeld], uint64(monotonic()))
				rep.KillsHolding++
			}
		}
		w.Process.Kill()
		w.Wait()
		rep.Kills++
		if err := start(i); err != nil {
			return err
		}
		select {
		case <-progress.C:
			if !*asJSON {
				fmt.Fprintf(os.Stderr, "\r%4.0fs  increments %-9d kills %-5d recoveries %-5d reads verified %-10d torn %d   ",
					time.Since(begin).Seconds(), atomic.LoadUint64(t.counter()), rep.Kills, t.mu.Inspect().Recoveries, t.stat(sVerified), t.stat(sTornSeq)+t.stat(sTornRec))
			}
		default:
		}
	}
	atomic.StoreUint64(&t.stats[sStop], 1)
	for _, w := range workers {
		w.Wait()
	}
	if !*asJSON {
		fmt.Fprintln(os.Stderr)
	}
	// Take the lock once to repair what a last victim left, as any
	// process would.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	g, err := t.mu.Acquire(ctx)
	if err != nil {
		rep.Violations = append(rep.Violations, "the lock is wedged: "+err.Error())
	} else {
		if g.Recovered() {
			t.repair()
		}
		g.Release()
	}
	rep.Seconds = time.Since(begin).Seconds()
	rep.Increments = atomic.LoadUint64(t.counter())
	rep.Recoveries = t.mu.Inspect().Recoveries + t.recoveries(t.l.seq) + t.recoveries(t.l.rec)
	rep.ReadsVerified = t.stat(sVerified)
	rep.DirtyReadsTold = t.stat(sDirty)
	rep.TornAccepted = t.stat(sTornSeq) + t.stat(sTornRec)
	rep.LostOrDoubled = int64(t.committed()) - int64(rep.Increments)
	n := min(int(t.stat(sLatIdx)), tLatencies)
	lats := slices.Clone(t.lat[:n])
	slices.Sort(lats)
	if n > 0 {
		us := func(q float64) float64 { return float64(lats[min(n-1, int(q*float64(n)))]) / 1e3 }
		rep.RecoveryP50Us, rep.RecoveryP99Us, rep.RecoveryMaxUs = us(0.5), us(0.99), float64(lats[n-1])/1e3
	}
	if rep.TornAccepted != 0 {
		rep.Violations = append(rep.Violations, fmt.Sprintf("%d torn values accepted", rep.TornAccepted))
	}
	if rep.LostOrDoubled != 0 {
		rep.Violations = append(rep.Violations, fmt.Sprintf("%d increments lost or counted twice", rep.LostOrDoubled))
	}
	if rep.Violations == nil {
		rep.Violations = []string{}
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
	} else {
		fmt.Printf("torture: %s mode, %d processes, %.1f s, %d-byte records\n", rep.Mode, rep.Processes, rep.Seconds, rep.RecordBytes)
		fmt.Printf("  increments %d; kills %d (%d while holding the lock); recoveries %d\n", rep.Increments, rep.Kills, rep.KillsHolding, rep.Recoveries)
		fmt.Printf("  kill -> takeover: p50 %.0f µs, p99 %.0f µs, max %.0f µs (%d measured)\n", rep.RecoveryP50Us, rep.RecoveryP99Us, rep.RecoveryMaxUs, n)
		fmt.Printf("  reads verified %d; dirty reads told %d; torn values accepted %d; increments lost or doubled %d\n",
			rep.ReadsVerified, rep.DirtyReadsTold, rep.TornAccepted, rep.LostOrDoubled)
		for _, v := range rep.Violations {
			fmt.Println("  VIOLATION:", v)
		}
	}
	if len(rep.Violations) > 0 {
		return errors.New("torture: violations found")
	}
	return nil
}

// repair completes the increment of a worker that died between the counter
// and its own count.
func (t *torture) repair() {
	j := atomic.LoadUint64(t.journal())
	if j != 0 && atomic.LoadUint64(t.counter()) == t.committed()+1 {
		atomic.AddUint64(&t.mine[j-1], 1)
	}
	atomic.StoreUint64(t.journal(), 0)
}

func tortureWorker(args []string) error {
	if len(args) != 3 {
		return errors.New("torture-worker: want a region path, an index and a size")
	}
	i, _ := strconv.Atoi(args[1])
	size, _ := strconv.Atoi(args[2])
	t, err := openTorture(args[0], size, shm.ModeAuto)
	if err != nil {
		return err
	}
	defer t.r.Close()
	ctx := context.Background()
	buf := make([]byte, size)
	counter, journal := t.counter(), t.journal()
	for v := uint64(os.Getpid()) << 32; atomic.LoadUint64(&t.stats[sStop]) == 0; v++ {
		// An increment under the robust lock, journaled.
		g, err := t.mu.Acquire(ctx)
		if err != nil {
			return err
		}
		if g.Recovered() {
			if k := atomic.SwapUint64(&t.stats[sKilledHeld], 0); k != 0 {
				idx := atomic.AddUint64(&t.stats[sLatIdx], 1) - 1
				atomic.StoreUint64(&t.lat[idx%tLatencies], uint64(monotonic()-int64(k)))
			}
			t.repair()
		}
		atomic.StoreUint64(journal, uint64(i+1))
		c := atomic.LoadUint64(counter)
		// A critical section long enough for kills to land in, and a
		// non-atomic increment that two holders at once would break.
		for t0 := time.Now(); time.Since(t0) < 20*time.Microsecond; {
		}
		atomic.StoreUint64(counter, c+1)
		atomic.AddUint64(&t.mine[i], 1)
		atomic.StoreUint64(journal, 0)
		g.Commit()
		g.Release()

		// A value written to both records, then both read back.
		val := record(v, size)
		if w, err := t.seq.Write(ctx); err == nil {
			w.StoreAt(0, val[:8])
			w.Store(val)
			w.Commit()
			w.Release()
		}
		if u, err := t.rec.Write(ctx); err == nil {
			u.Store(val)
			u.Commit()
			u.Release()
		}
		switch err := t.seq.Read(buf); {
		case errors.Is(err, seqlock.ErrDirty):
			atomic.AddUint64(&t.stats[sDirty], 1)
		case err == nil && verifyRecord(buf):
			atomic.AddUint64(&t.stats[sVerified], 1)
		case err == nil:
			atomic.AddUint64(&t.stats[sTornSeq], 1)
		}
		t.rec.Read(buf)
		if verifyRecord(buf) {
			atomic.AddUint64(&t.stats[sVerified], 1)
		} else {
			atomic.AddUint64(&t.stats[sTornRec], 1)
		}
	}
	return nil
}

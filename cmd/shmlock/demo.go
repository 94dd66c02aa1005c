package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/internal/owner"
	"github.com/shmlock/shmlock/seqlock"
	"github.com/shmlock/shmlock/shm"
)

const demoWorkerCmd = "demo-worker"

// The demo region's data area.
const (
	dMutex     = 0
	dCounter   = 64  // the shared counter
	dJournal   = 72  // worker index + 1 while an increment is in flight
	dRecoverer = 80  // pid of the last worker that recovered the lock
	dRecovered = 88  // CLOCK_MONOTONIC ns of that recovery
	dStop      = 96  // nonzero: workers stop
	dMine      = 128 // per-worker committed increments
	dMaxWork   = 16
	dRecord    = dMine + 8*dMaxWork // a seqlock.Record of dRecBytes: the counter, in every word
	dRecBytes  = 64
)

// demoLayout declares the demo region's objects, at the offsets above.
func demoLayout() *shm.Layout {
	var l shm.Layout
	at := func(got, want int) {
		if got != want {
			panic(fmt.Sprintf("demo: an object at %d, declared at %d", got, want))
		}
	}
	at(l.Lock("mutex", shmlock.Size), dMutex)
	at(l.Data("counter, journal, recoverer, stop", dMine-dCounter), dCounter)
	at(l.Data("per worker", 8*dMaxWork), dMine)
	at(l.Lock("record", seqlock.RecordSize(dRecBytes)), dRecord)
	return &l
}

type demoRegion struct {
	r    *shm.Region
	mu   *shmlock.Mutex
	rec  *seqlock.Record
	head []uint64 // dCounter..dMine
	mine []uint64 // dMine..: per worker
}

func openDemo(path string, mode shm.Mode) (*demoRegion, error) {
	r, err := shm.Open(path, shm.Options{Layout: demoLayout(), Mode: mode})
	if err != nil {
		return nil, err
	}
	mu, err := shmlock.New(r, dMutex)
	if err != nil {
		r.Close()
		return nil, err
	}
	d := &demoRegion{r: r, mu: mu}
	if d.rec, err = seqlock.NewRecord(r, dRecord, dRecBytes); err == nil {
		if d.head, err = words(r, dCounter, (dMine-dCounter)/8); err == nil {
			d.mine, err = words(r, dMine, dMaxWork)
		}
	}
	if err != nil {
		r.Close()
		return nil, err
	}
	return d, nil
}

// recordValue reads the record and checks it: every word must hold the same
// value, a counter value some worker published whole. It returns the value
// and whether the read was whole.
func (d *demoRegion) recordValue(buf []byte) (uint64, bool) {
	d.rec.Read(buf)
	v := binary.NativeEndian.Uint64(buf)
	for w := 8; w < len(buf); w += 8 {
		if binary.NativeEndian.Uint64(buf[w:]) != v {
			return v, false
		}
	}
	return v, true
}

func (d *demoRegion) word(off int) *uint64 {
	if off >= dMine {
		return &d.mine[(off-dMine)/8]
	}
	return &d.head[(off-dCounter)/8]
}

func (d *demoRegion) load(off int) uint64 { return atomic.LoadUint64(d.word(off)) }

func (d *demoRegion) committed(workers int) uint64 {
	var s uint64
	for i := range workers {
		s += d.load(dMine + 8*i)
	}
	return s
}

func demo(args []string) error {
	fs := flag.NewFlagSet("demo", flag.ExitOnError)
	workers := fs.Int("workers", 3, "worker processes")
	kills := fs.Int("kills", 3, "holders to SIGKILL")
	region := fs.String("region", fmt.Sprintf("shmlock-demo-%d", os.Getpid()), "region name or path (removed at the end)")
	modeFlag := fs.String("mode", "auto", "locking mode of the region: auto, probe or robust")
	fs.Parse(args)
	mode, err := parseMode(*modeFlag)
	if err != nil {
		return err
	}
	if *workers < 2 || *workers > dMaxWork {
		return fmt.Errorf("demo: -workers must be in 2..%d", dMaxWork)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	shm.Remove(*region)
	d, err := openDemo(*region, mode)
	if err != nil {
		return err
	}
	defer shm.Remove(*region)
	defer d.r.Close()
	path := d.r.Path()
	say := func(format string, a ...any) { fmt.Printf("demo: "+format+"\n", a...) }
	say("region %s (%v mode: %s): one robust lock, a counter, a journal for half-done increments,", path, d.r.Mode(), modeSays[d.r.Mode()])
	say("  and a %d-byte record that holders rewrite word by word with the counter's value", dRecBytes)

	// The demo process reads the record all along, without any lock, and
	// checks every read: all words equal, never going backwards.
	var reads, torn, backwards atomic.Uint64
	stopReading := make(chan struct{})
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		buf := make([]byte, dRecBytes)
		var last uint64
		for {
			select {
			case <-stopReading:
				return
			default:
			}
			v, whole := d.recordValue(buf)
			reads.Add(1)
			switch {
			case !whole:
				torn.Add(1)
			case v < last:
				backwards.Add(1)
			}
			last = max(last, v)
			time.Sleep(20 * time.Microsecond)
		}
	}()

	procs := make([]*exec.Cmd, *workers)
	start := func(i int) error {
		cmd := exec.Command(self, demoWorkerCmd, path, strconv.Itoa(i))
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		cmd.SysProcAttr = childAttr()
		if err := cmd.Start(); err != nil {
			return err
		}
		procs[i] = cmd
		return nil
	}
	defer func() {
		for _, p := range procs {
			if p != nil && p.ProcessState == nil {
				p.Process.Kill()
				p.Wait()
			}
		}
	}()
	for i := range procs {
		if err := start(i); err != nil {
			return err
		}
	}
	say("started %d workers; each loops: lock, counter++ (slowly, with a journal), unlock", *workers)
	time.Sleep(300 * time.Millisecond)

	for k := 1; k <= *kills; k++ {
		// Find a worker inside its critical section: stop the holder,
		// and kill it only if it still holds once stopped (it may have
		// released between our look and the signal).
		var victim int
		var snap shmlock.State
		for deadline := time.Now().Add(5 * time.Second); ; {
			snap = d.mu.Inspect()
			victim = -1
			for i, p := range procs {
				if snap.Held && p.Process.Pid == int(snap.Holder.PID) {
					victim = i
				}
			}
			if victim >= 0 {
				// SIGSTOP is delivered asynchronously: look at the
				// lock only once the process is really stopped.
				pid := procs[victim].Process.Pid
				stop(procs[victim].Process)
				if waitStopped(pid) && d.mu.Inspect().Owner == snap.Owner {
					break
				}
				cont(procs[victim].Process)
			}
			if time.Now().After(deadline) {
				return errors.New("demo: no worker ever held the lock")
			}
			time.Sleep(100 * time.Microsecond)
		}
		before := d.mu.Inspect().Recoveries
		say("counter is %d; SIGKILL worker %d (pid %d) while it holds the lock (generation %d)",
			d.load(dCounter), victim, snap.Holder.PID, snap.Generation)
		killedAt := monotonic()
		procs[victim].Process.Kill()
		procs[victim].Wait()
		deadline := time.Now().Add(5 * time.Second)
		for d.mu.Inspect().Recoveries == before {
			if time.Now().After(deadline) {
				return fmt.Errorf("demo: nobody recovered the lock within 5 s: %+v", d.mu.Inspect())
			}
			time.Sleep(100 * time.Microsecond)
		}
		for d.load(dRecovered) < uint64(killedAt) && time.Now().Before(deadline) {
			time.Sleep(100 * time.Microsecond)
		}
		say("pid %d took the lock over %v after the kill",
			d.load(dRecoverer), time.Duration(int64(d.load(dRecovered))-killedAt).Round(time.Microsecond))
		v, whole := d.recordValue(make([]byte, dRecBytes))
		say("the record, read without a lock, holds %d, whole=%v: a copy the dead holder half wrote is never published", v, whole)
		if err := start(victim); err != nil {
			return err
		}
		say("restarted worker %d as pid %d", victim, procs[victim].Process.Pid)
		time.Sleep(300 * time.Millisecond)
	}

	atomic.StoreUint64(d.word(dStop), 1)
	for _, p := range procs {
		p.Wait()
	}
	close(stopReading)
	<-readerDone
	// A worker that finished while holding nothing leaves the lock free;
	// take it once to repair anything left behind, as any process would.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	g, err := d.mu.Acquire(ctx)
	if err != nil {
		return err
	}
	if g.Recovered() {
		d.repair(*workers, "demo")
	}
	g.Commit()
	g.Release()
	counter, committed := d.load(dCounter), d.committed(*workers)
	say("counter = %d, increments committed by the workers = %d, recoveries = %d", counter, committed, d.mu.Inspect().Recoveries)
	if counter != committed {
		return fmt.Errorf("demo: %d increments lost or counted twice", int64(committed)-int64(counter))
	}
	v, whole := d.recordValue(make([]byte, dRecBytes))
	say("record: %d lock-free reads while holders were killed mid-write: %d torn, %d gone backwards; it holds %d, whole=%v",
		reads.Load(), torn.Load(), backwards.Load(), v, whole)
	if torn.Load() != 0 || backwards.Load() != 0 || !whole {
		return errors.New("demo: a reader was handed a torn or stale record")
	}
	say("no increment lost or counted twice, no torn value read; region removed")
	return nil
}

// What the demo says of each mode, and of how a waiter learnt of a death.
var (
	modeSays = map[shm.Mode]string{
		shm.ModeProbe:  "waiters probe a holder's liveness and take over from the dead",
		shm.ModeRobust: "the kernel marks the locks of a process that dies, and wakes a waiter",
	}
	foundSays = map[shm.Mode]string{
		shm.ModeProbe:  "found the holder dead",
		shm.ModeRobust: "found the lock marked by the kernel at its holder's death",
	}
)

// parseMode reads a -mode flag.
func parseMode(s string) (shm.Mode, error) {
	for _, m := range []shm.Mode{shm.ModeAuto, shm.ModeProbe, shm.ModeRobust} {
		if s == m.String() {
			return m, nil
		}
	}
	return 0, fmt.Errorf("-mode %q: want auto, probe or robust", s)
}

// waitStopped waits, briefly, until pid is in state T.
func waitStopped(pid int) bool {
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return false
		}
		if st, err := owner.ParseStat(b); err == nil && st.State == 'T' {
			return true
		}
		time.Sleep(50 * time.Microsecond)
	}
	return false
}

// repair completes the increment of a worker that died between bumping the
// counter and its own count (the journal names it), and clears the journal.
func (d *demoRegion) repair(workers int, who string) {
	j := d.load(dJournal)
	if j == 0 {
		fmt.Printf("%s: the dead holder had not started an increment: nothing to repair\n", who)
		return
	}
	if d.load(dCounter) == d.committed(workers)+1 {
		atomic.AddUint64(d.word(dMine+8*int(j-1)), 1)
		fmt.Printf("%s: journal: worker %d died after counter++ but before recording it: completed it\n", who, j-1)
	} else {
		fmt.Printf("%s: journal: worker %d died before counter++: nothing to undo\n", who, j-1)
	}
	atomic.StoreUint64(d.word(dJournal), 0)
}

// publish writes v into every word of the record, slowly, so that a kill
// can land half way; readers see the previous value until the commit.
func (d *demoRegion) publish(v uint64) error {
	u, err := d.rec.Write(context.Background())
	if err != nil {
		return err
	}
	defer u.Release()
	var w [8]byte
	binary.NativeEndian.PutUint64(w[:], v)
	for off := 0; off < dRecBytes; off += 8 {
		u.StoreAt(off, w[:])
		if off == dRecBytes/2 {
			time.Sleep(100 * time.Microsecond)
		}
	}
	u.Commit()
	return nil
}

func demoWorker(args []string) error {
	if len(args) != 2 {
		return errors.New("demo-worker: want a region path and a worker index")
	}
	i, err := strconv.Atoi(args[1])
	if err != nil || i < 0 || i >= dMaxWork {
		return fmt.Errorf("demo-worker: bad index %q", args[1])
	}
	d, err := openDemo(args[0], shm.ModeAuto)
	if err != nil {
		return err
	}
	defer d.r.Close()
	who := fmt.Sprintf("  worker %d (pid %d)", i, os.Getpid())
	for d.load(dStop) == 0 {
		g, err := d.mu.Acquire(context.Background())
		if err != nil {
			return err
		}
		if g.Recovered() {
			atomic.StoreUint64(d.word(dRecovered), uint64(monotonic()))
			atomic.StoreUint64(d.word(dRecoverer), uint64(os.Getpid()))
			fmt.Printf("%s: %s, and took the lock over (told: Recovered)\n", who, foundSays[d.r.Mode()])
			d.repair(dMaxWork, who)
		}
		atomic.StoreUint64(d.word(dJournal), uint64(i+1))
		c := d.load(dCounter)
		// Three windows for a kill to land in: before the counter moves,
		// between the counter and this worker's own record of it, and in
		// the middle of rewriting the record.
		time.Sleep(250 * time.Microsecond)
		atomic.StoreUint64(d.word(dCounter), c+1)
		time.Sleep(250 * time.Microsecond)
		atomic.AddUint64(d.word(dMine+8*i), 1)
		atomic.StoreUint64(d.word(dJournal), 0)
		if err := d.publish(c + 1); err != nil {
			return err
		}
		g.Commit()
		g.Release()
		time.Sleep(50 * time.Microsecond)
	}
	return nil
}

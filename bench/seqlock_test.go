//go:build linux

// Package bench measures shmlock against what Go programs use today, side by
// side in one run. Run: go test -run '^$' -bench . -count 6 ./bench/
package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/seqlock"
	"github.com/shmlock/shmlock/shm"
)

var sizes = []int{8, 64, 256, 4096}

// region lays out, for one record size: a SeqLock, a Record, a Mutex with
// its data, and a control line (stop flag, per-reader counts).
type region struct {
	r    *shm.Region
	seq  *seqlock.SeqLock
	rec  *seqlock.Record
	mu   *shmlock.Mutex
	data []byte // the mutex-protected copy
	ctl  []uint64
	path string
}

func openRegion(path string, size int) (*region, error) {
	seqOff := 0
	recOff := seqOff + seqlock.SeqLockSize(size)
	muOff := recOff + seqlock.RecordSize(size)
	dataOff := muOff + shmlock.Size
	ctlOff := dataOff + seqlock.SeqLockSize(size)
	r, err := shm.Open(path, shm.Options{Size: ctlOff + 4*shm.LineSize, Slots: 32})
	if err != nil {
		return nil, err
	}
	g := &region{r: r, path: path}
	if g.seq, err = seqlock.NewSeqLock(r, seqOff, size); err != nil {
		return nil, err
	}
	if g.rec, err = seqlock.NewRecord(r, recOff, size); err != nil {
		return nil, err
	}
	if g.mu, err = shmlock.New(r, muOff); err != nil {
		return nil, err
	}
	g.data, _ = r.Bytes(dataOff, size)
	b, _ := r.Bytes(ctlOff, 4*shm.LineSize)
	g.ctl = unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), len(b)/8)
	return g, nil
}

func newRegion(b *testing.B, size int) *region {
	path := fmt.Sprintf("%s/shmlock-bench-%d-%d", shm.Dir, os.Getpid(), size)
	os.Remove(path)
	g, err := openRegion(path, size)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { g.r.Close(); os.Remove(path) })
	return g
}

// BenchmarkSeqRead: one uncontended read of a record, by each mechanism.
func BenchmarkSeqRead(b *testing.B) {
	for _, size := range sizes {
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			g := newRegion(b, size)
			dst := make([]byte, size)
			b.Run("seqlock", func(b *testing.B) {
				b.SetBytes(int64(size))
				for b.Loop() {
					if err := g.seq.Read(dst); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("record", func(b *testing.B) {
				b.SetBytes(int64(size))
				for b.Loop() {
					g.rec.Read(dst)
				}
			})
			b.Run("shmlock", func(b *testing.B) {
				b.SetBytes(int64(size))
				for b.Loop() {
					g.mu.Lock()
					copy(dst, g.data)
					g.mu.Unlock()
				}
			})
			b.Run("flock", func(b *testing.B) {
				f, err := os.Open(g.path)
				if err != nil {
					b.Fatal(err)
				}
				defer f.Close()
				fd := int(f.Fd())
				b.SetBytes(int64(size))
				for b.Loop() {
					unix.Flock(fd, unix.LOCK_SH)
					copy(dst, g.data)
					unix.Flock(fd, unix.LOCK_UN)
				}
			})
		})
	}
}

// BenchmarkSeqWrite: one write of a 64-byte record.
func BenchmarkSeqWrite(b *testing.B) {
	g := newRegion(b, 64)
	src := make([]byte, 64)
	ctx := context.Background()
	b.Run("seqlock", func(b *testing.B) {
		for b.Loop() {
			w, _ := g.seq.Write(ctx)
			w.Store(src)
			w.Commit()
			w.Release()
		}
	})
	b.Run("record", func(b *testing.B) {
		for b.Loop() {
			u, _ := g.rec.Write(ctx)
			u.Store(src)
			u.Commit()
			u.Release()
		}
	})
}

// BenchmarkSeqReadScaling: N reader processes each read a 64-byte record b.N
// times while another process writes it every 20 µs or so: a SeqLock, a
// Record, a copy under the robust mutex (readers exclude each other), and a
// copy under flock (LOCK_SH readers, a LOCK_EX writer). Reports the readers'
// total reads per second; on 2 cores, more than 2 processes share them.
func BenchmarkSeqReadScaling(b *testing.B) {
	for _, kind := range []string{"seqlock", "record", "shmlock", "flock"} {
		for _, n := range []int{1, 2, 4} {
			b.Run(fmt.Sprintf("%s/readers=%d", kind, n), func(b *testing.B) {
				g := newRegion(b, 64)
				writer := child(b, "write", g.path, kind, "0")
				defer func() { writer.Process.Kill(); writer.Wait() }()
				b.ResetTimer()
				start := time.Now()
				var readers []*exec.Cmd
				for range n {
					readers = append(readers, child(b, "read", g.path, kind, strconv.Itoa(b.N)))
				}
				for _, r := range readers {
					if err := r.Wait(); err != nil {
						b.Fatal(err)
					}
				}
				elapsed := time.Since(start)
				b.StopTimer()
				atomic.StoreUint64(&g.ctl[0], 1)
				b.ReportMetric(float64(n*b.N)/elapsed.Seconds(), "reads/s")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}

func child(b *testing.B, args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), "BENCH_CHILD="+strings.Join(args, " "))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	return cmd
}

func TestMain(m *testing.M) {
	if args := strings.Fields(os.Getenv("BENCH_CHILD")); len(args) > 0 {
		time.AfterFunc(5*time.Minute, func() { os.Exit(3) })
		os.Exit(runChild(args))
	}
	os.Exit(m.Run())
}

func runChild(args []string) int {
	switch args[0] {
	case "contend", "xadd":
		return contendChild(args[0], args[1:])
	case "grid":
		return gridLoop(args[1:])
	case "rw":
		return rwChild(args[1:])
	case "rw-hold":
		return rwHold(args[1:])
	case "recover-hold", "recover-hold-unmap", "recover-wait", "recover-waitn":
		return recoverChild(args[0], args[1:])
	}
	role, path, kind := args[0], args[1], args[2]
	count, _ := strconv.Atoi(args[3])
	g, err := openRegion(path, 64)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	buf := make([]byte, 64)
	read, write := g.access(kind, buf)
	switch role {
	case "write":
		for v := byte(0); atomic.LoadUint64(&g.ctl[0]) == 0; v++ {
			buf[0] = v
			write()
			// A writer at a steady pace, not a spinning one: on two cores a
			// spinning writer would take a core from the readers.
			time.Sleep(20 * time.Microsecond)
		}
	case "read":
		for range count {
			read()
		}
	}
	return 0
}

// access returns one read into buf and one write from buf of the record, by
// the mechanism kind.
func (g *region) access(kind string, buf []byte) (read, write func()) {
	ctx := context.Background()
	switch kind {
	case "seqlock":
		return func() { g.seq.Read(buf) }, func() {
			w, _ := g.seq.Write(ctx)
			w.Store(buf)
			w.Commit()
			w.Release()
		}
	case "record":
		return func() { g.rec.Read(buf) }, func() {
			u, _ := g.rec.Write(ctx)
			u.Store(buf)
			u.Commit()
			u.Release()
		}
	case "shmlock":
		return func() { g.mu.Lock(); copy(buf, g.data); g.mu.Unlock() },
			func() { g.mu.Lock(); copy(g.data, buf); g.mu.Unlock() }
	case "flock":
		f, err := os.Open(g.path)
		if err != nil {
			panic(err)
		}
		fd := int(f.Fd())
		return func() { unix.Flock(fd, unix.LOCK_SH); copy(buf, g.data); unix.Flock(fd, unix.LOCK_UN) },
			func() { unix.Flock(fd, unix.LOCK_EX); copy(g.data, buf); unix.Flock(fd, unix.LOCK_UN) }
	}
	panic("no mechanism " + kind)
}

package shmlock_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/shm"
)

// Two attachments to one region stand in for two processes: they share the
// lock and the counter it protects.
func Example() {
	name := fmt.Sprintf("shmlock-example-%d", os.Getpid())
	defer shm.Remove(name)

	// Every process declares the same layout and opens the same name; the
	// first creates the region. Each object gets lines of its own.
	var l shm.Layout
	lock := l.Lock("lock", shmlock.Size)
	data := l.Data("counter", 8)
	r, err := shm.Open(name, shm.Options{Layout: &l})
	if err != nil {
		panic(err)
	}
	defer r.Close()
	mu, err := shmlock.New(r, lock)
	if err != nil {
		panic(err)
	}
	counter, _ := r.Bytes(data, 8)

	mu.Lock()
	counter[0]++
	mu.Unlock()
	fmt.Println("counter:", counter[0])
	// Output: counter: 1
}

// Acquire waits within a context and says whether the previous holder died
// holding the lock, in which case the data may be half updated.
func ExampleMutex_Acquire() {
	name := fmt.Sprintf("shmlock-example-acquire-%d", os.Getpid())
	defer shm.Remove(name)
	r, err := shm.Open(name, shm.Options{Size: shmlock.Size})
	if err != nil {
		panic(err)
	}
	defer r.Close()
	mu, _ := shmlock.New(r, 0)

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	g, err := mu.Acquire(ctx)
	if err != nil {
		fmt.Println(err) // names the holder, whether it is alive, and for how long it has held
		return
	}
	defer g.Release()
	if g.Recovered() {
		// Check and repair what the lock protects before trusting it.
	}
	fmt.Println("recovered:", g.Recovered(), "fence:", g.Fence())
	g.Commit()
	// Output: recovered: false fence: 1
}

// A wait that times out reports who holds the lock and what to do about it.
func ExampleHeldError() {
	name := fmt.Sprintf("shmlock-example-held-%d", os.Getpid())
	defer shm.Remove(name)
	holder, _ := shm.Open(name, shm.Options{Size: shmlock.Size})
	defer holder.Close()
	waiter, _ := shm.Open(name, shm.Options{})
	defer waiter.Close()
	a, _ := shmlock.New(holder, 0)
	b, _ := shmlock.New(waiter, 0)

	a.Lock()
	defer a.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := b.Acquire(ctx)
	var he *shmlock.HeldError
	if errors.As(err, &he) {
		fmt.Println(he.Holder.State, he.Holder.PID == int32(os.Getpid()), errors.Is(err, context.DeadlineExceeded))
	}
	// Output: alive true true
}

// Readers share an RWMutex, a writer excludes them; a reader is told when a
// writer died and nobody has repaired its half-done write yet. Each process
// counts its own shares on a line of its own, so a writer frees the shares
// of a reader that died holding them.
func ExampleRWMutex() {
	name := fmt.Sprintf("shmlock-example-rw-%d", os.Getpid())
	defer shm.Remove(name)
	var l shm.Layout
	lock := l.Lock("table", shmlock.RWMutexSize(16)) // its size follows the process table's
	r, err := shm.Open(name, shm.Options{Layout: &l, Slots: 16})
	if err != nil {
		panic(err)
	}
	defer r.Close()
	rw, err := shmlock.NewRWMutex(r, lock)
	if err != nil {
		panic(err)
	}

	ctx := context.Background()
	g, err := rw.RAcquire(ctx)
	if err != nil {
		panic(err)
	}
	fmt.Println("reading; half-written data to repair:", g.Recovered())
	fmt.Println("a writer may enter beside a reader:", rw.TryLock())
	g.Release()

	w, err := rw.Acquire(ctx)
	if err != nil {
		panic(err)
	}
	fmt.Println("writing; a writer died before:", w.Recovered())
	w.Commit()
	w.Release()
	// Output:
	// reading; half-written data to repair: false
	// a writer may enter beside a reader: false
	// writing; a writer died before: false
}

//go:build linux

package robust

import (
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The design not taken, measured: linking a lock into the robust list at
// every Lock and unlinking it at every Unlock, the glibc way, with
// list_op_pending set around each list operation. The list belongs to one
// dedicated thread but is changed by goroutines on any thread, so its
// operations need a lock of their own: here a sync.Mutex, the lightest
// in-process lock that still sleeps when contended. shmlock links each lock
// once instead (see shm/robust_linux.go); BenchmarkLinkPerHold puts a number
// on what that saves, beside a bare CAS lock+unlock on the same words.

// perHold is a list changed at every hold: entries carry a prev pointer
// (the kernel reads only next) so that an unlink is O(1). The views use
// unsafe.Pointer where the kernel's structs have addresses; they lie in a
// page outside the Go heap.
type perHold struct {
	mu   sync.Mutex
	head *listHead
}

// listHead is struct robust_list_head, seen with pointer fields.
type listHead struct {
	next    unsafe.Pointer
	offset  int64
	pending unsafe.Pointer
}

type entry struct {
	next unsafe.Pointer // the kernel's robust_list
	prev unsafe.Pointer
}

func (p *perHold) lock(w *uint32, e *entry, tid uint32) {
	for !atomic.CompareAndSwapUint32(w, 0, tid) {
	}
	p.mu.Lock()
	h := unsafe.Pointer(p.head)
	atomic.StorePointer(&p.head.pending, unsafe.Pointer(e))
	e.prev = h
	atomic.StorePointer(&e.next, p.head.next)
	if n := p.head.next; n != h {
		(*entry)(n).prev = unsafe.Pointer(e)
	}
	atomic.StorePointer(&p.head.next, unsafe.Pointer(e))
	atomic.StorePointer(&p.head.pending, nil)
	p.mu.Unlock()
}

func (p *perHold) unlock(w *uint32, e *entry) {
	p.mu.Lock()
	atomic.StorePointer(&p.head.pending, unsafe.Pointer(e))
	atomic.StorePointer(&(*entry)(e.prev).next, e.next) // the head's first word is its next, too
	if e.next != unsafe.Pointer(p.head) {
		(*entry)(e.next).prev = e.prev
	}
	atomic.StoreUint32(w, 0)
	atomic.StorePointer(&p.head.pending, nil)
	p.mu.Unlock()
}

func BenchmarkLinkPerHold(b *testing.B) {
	page, err := unix.Mmap(-1, 0, unix.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Munmap(page)
	h := (*listHead)(unsafe.Pointer(&page[0]))
	h.next = unsafe.Pointer(h)
	p := &perHold{head: h}
	const lines = 16
	words := (*[lines * 16]uint32)(unsafe.Pointer(&page[1024])) // a line (64 bytes) per lock
	entries := (*[lines * 8]entry)(unsafe.Pointer(&page[2048]))
	var next atomic.Int32
	pick := func() (*uint32, *entry) {
		i := int(next.Add(1)-1) % lines
		return &words[16*i], &entries[8*i]
	}
	b.Run("cas", func(b *testing.B) {
		w, _ := pick()
		for b.Loop() {
			for !atomic.CompareAndSwapUint32(w, 0, 7) {
			}
			atomic.CompareAndSwapUint32(w, 7, 0)
		}
	})
	b.Run("per-hold", func(b *testing.B) {
		w, e := pick()
		for b.Loop() {
			p.lock(w, e, 7)
			p.unlock(w, e)
		}
	})
	// Goroutines on locks of their own: a bare CAS scales with the cores,
	// the per-hold list serialises them on its lock.
	b.Run("cas-parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			w, _ := pick()
			for pb.Next() {
				for !atomic.CompareAndSwapUint32(w, 0, 7) {
				}
				atomic.CompareAndSwapUint32(w, 7, 0)
			}
		})
	})
	b.Run("per-hold-parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			w, e := pick()
			for pb.Next() {
				p.lock(w, e, 7)
				p.unlock(w, e)
			}
		})
	})
}

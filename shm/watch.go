package shm

import (
	"sync"
	"sync/atomic"
)

// A death watch turns the exit of an attached process into a prompt call, so
// that a lock waiter probes the holder at once rather than at its next
// scheduled probe. A watch is a hint and never evidence: the caller still
// probes, and only a Dead verdict licenses a recovery. The call may even come
// a little before the probe can see the death (the liveness lock goes when
// the last reference to the holder's mapping does, and a reader of its /proc
// files holds one for a moment), so a caller that finds its holder not yet
// Dead after a call should probe again soon. A watch that cannot be set up (a
// holder in another PID namespace, a system without pidfds), or that watches
// the wrong process (the holder died and its PID was reused before the watch
// began), leaves the caller on its probe schedule: slower, never wrong.
//
// One wait serves every caller that watches the same attachment, and it
// outlives them: it ends when the process exits, when the Region is closed,
// or once its slot is claimed by another attachment (at the next Watch of the
// new one, or when the last caller stops). So a process that holds locks
// again and again costs one pidfd, opened once, and a caller's stop is a map
// deletion, not a system call.
type watches struct {
	mu     sync.Mutex
	slots  map[int]*watch // by process-table slot: the attachment last watched there
	closed bool
}

// watch is the wait for one attachment's process to exit.
type watch struct {
	id     uint32
	calls  map[*watchCall]struct{} // nil once fired
	cancel func()                  // ends the wait; set by startWatch
}

// watchCall is one caller's f, called at most once: state goes from armed to
// stopped (by stop) or to started (by the watch), never both.
type watchCall struct {
	f     func()
	state atomic.Int32
}

const (
	callArmed = iota
	callStopped
	callStarted
)

func (c *watchCall) start() {
	if c.state.CompareAndSwap(callArmed, callStarted) {
		c.f()
	}
}

// watchStart is what startWatch managed.
type watchStart uint8

const (
	watchNone    watchStart = iota // no watch is possible: rely on probes
	watchGone                      // the process is known gone already
	watchStarted                   // a wait runs, and calls r.fire on exit
)

// watchID calls f once, in its own goroutine, when the process attached as id
// exits, unless stop is called first: f never starts after stop returns
// (stop does not wait for an f that has started). If the attachment is known
// gone already (its slot was claimed again since), f is called at once. If no
// watch is possible, f is never called. Call Watch before the probe whose
// verdict you act on: a death before the watch began is then seen by that
// probe.
//
// A watch costs a file descriptor and a parked goroutine per watched
// attachment, however many callers share it, until its process exits, its
// slot is claimed again, or r is closed: at most one per slot.
func (r *Region) watchID(id uint32, f func()) (stop func()) {
	if r.mode == ModeRobust {
		// The kernel marks the lock word of a dead holder and wakes a
		// waiter itself: no watch needed.
		return func() {}
	}
	return r.watchAttachment(id, f)
}

// watchAttachment is watchID in either mode: for what the kernel does not
// mark, such as a reader's shares.
func (r *Region) watchAttachment(id uint32, f func()) (stop func()) {
	c := &watchCall{f: f}
	stop = func() { r.unwatch(id, c) }
	ws := &r.watches
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.closed {
		return func() {}
	}
	slot := slotOf(id)
	if !r.current(id) {
		// An ID from a lock word that an attachment since gone left
		// held (or a corrupt one): nothing to wait for, and the slot's
		// watch, if any, belongs to whoever claimed it since.
		go c.start()
		return stop
	}
	w := ws.slots[slot]
	if w != nil && w.id != id {
		// The slot's current attachment is not the one watched before,
		// which is gone (its slot could not be claimed otherwise). Tell
		// its callers, and watch the new one.
		delete(ws.slots, slot)
		w.cancel()
		for c := range w.calls {
			go c.start()
		}
		w = nil
	}
	if w == nil {
		w = &watch{id: id, calls: map[*watchCall]struct{}{}}
		switch r.startWatch(id, w) {
		case watchNone:
			return func() {}
		case watchGone:
			go c.start()
			return stop
		}
		if ws.slots == nil {
			ws.slots = map[int]*watch{}
		}
		ws.slots[slot] = w
	}
	w.calls[c] = struct{}{}
	return stop
}

// unwatch forgets c. The wait itself goes on for the next caller, unless
// its attachment is gone from the slot (it detached and another claimed the
// slot, its process living on): then nobody will need it again.
func (r *Region) unwatch(id uint32, c *watchCall) {
	c.state.CompareAndSwap(callArmed, callStopped)
	ws := &r.watches
	ws.mu.Lock()
	slot := slotOf(id)
	var cancel func()
	if w := ws.slots[slot]; w != nil && w.id == id {
		delete(w.calls, c)
		if len(w.calls) == 0 && !r.current(id) {
			delete(ws.slots, slot)
			cancel = w.cancel
		}
	}
	ws.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// current reports whether id names the attachment that holds its slot of the
// process table now (or held it last, if it detached since).
func (r *Region) current(id uint32) bool {
	slot := slotOf(id)
	return id>>idBits == 0 && slot >= 1 && slot <= r.slots &&
		atomic.LoadUint32(r.entry(slot).incarnation) == incarnationOf(id)
}

// fire runs when the process watched by w exited.
func (r *Region) fire(w *watch) {
	ws := &r.watches
	ws.mu.Lock()
	slot := slotOf(w.id)
	if ws.slots[slot] == w {
		delete(ws.slots, slot)
	}
	calls := w.calls
	w.calls = nil
	ws.mu.Unlock()
	for c := range calls {
		c.start()
	}
}

// closeWatches ends every wait and stops every callback, but those of a watch
// that fired just before, which may still be starting.
func (r *Region) closeWatches() {
	ws := &r.watches
	ws.mu.Lock()
	ws.closed = true
	slots := ws.slots
	ws.slots = nil
	for _, w := range slots {
		for c := range w.calls {
			c.state.CompareAndSwap(callArmed, callStopped)
		}
		w.calls = nil
	}
	ws.mu.Unlock()
	for _, w := range slots {
		w.cancel()
	}
}

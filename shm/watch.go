package shm

import "sync"

// A death watch turns the exit of an attached process into a prompt call, so
// that a lock waiter probes the holder at once rather than at its next
// scheduled probe. A watch is a hint and never evidence: the caller still
// probes, and only a Dead verdict licenses a recovery. A watch that cannot be
// set up (a holder in another PID namespace, a system without pidfds), or
// that watches the wrong process (the holder died and its PID was reused
// before the watch began), leaves the caller on its probe schedule: slower,
// never wrong.
type watches struct {
	mu     sync.Mutex
	m      map[uint32]*watch // by owner ID; one wait per watched process
	closed bool
}

// watch is the wait for one owner ID's process to exit, shared by every
// caller of Watch on that ID in this Region.
type watch struct {
	fns    map[uint64]func() // nil once fired
	next   uint64
	cancel func() // ends the wait; set by startWatch
}

// watchStart is what startWatch managed.
type watchStart uint8

const (
	watchNone    watchStart = iota // no watch is possible: rely on probes
	watchGone                      // the process is known gone already
	watchStarted                   // a wait runs, and calls r.fire on exit
)

// Watch calls f once, in its own goroutine, when the process attached as id
// exits, unless stop is called first. If the process is known gone already, f
// is called at once. If no watch is possible, f is never called. Call Watch
// before the probe whose verdict you act on: a death before the watch began
// is then seen by that probe.
//
// Watches cost a file descriptor and a parked goroutine per watched process,
// however many callers share them, for as long as any caller has not stopped.
func (r *Region) Watch(id uint32, f func()) (stop func()) {
	ws := &r.watches
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.closed {
		return func() {}
	}
	w := ws.m[id]
	if w == nil {
		w = &watch{fns: map[uint64]func(){}}
		switch r.startWatch(id, w) {
		case watchNone:
			return func() {}
		case watchGone:
			go f()
			return func() {}
		}
		if ws.m == nil {
			ws.m = map[uint32]*watch{}
		}
		ws.m[id] = w
	}
	k := w.next
	w.next++
	w.fns[k] = f
	return func() {
		ws.mu.Lock()
		delete(w.fns, k)
		var cancel func()
		if len(w.fns) == 0 && ws.m[id] == w {
			// The last caller lost interest before the process exited.
			delete(ws.m, id)
			cancel = w.cancel
		}
		ws.mu.Unlock()
		if cancel != nil {
			cancel()
		}
	}
}

// fire runs when the process watched by w exited.
func (r *Region) fire(id uint32, w *watch) {
	ws := &r.watches
	ws.mu.Lock()
	if ws.m[id] == w {
		delete(ws.m, id)
	}
	fns := w.fns
	w.fns = nil
	ws.mu.Unlock()
	for _, f := range fns {
		f()
	}
}

// closeWatches ends every wait and drops every callback that is not already
// being called.
func (r *Region) closeWatches() {
	ws := &r.watches
	ws.mu.Lock()
	ws.closed = true
	m := ws.m
	ws.m = nil
	for _, w := range m {
		w.fns = nil
	}
	ws.mu.Unlock()
	for _, w := range m {
		w.cancel()
	}
}

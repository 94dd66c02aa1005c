package closing

import (
	"runtime"
	"testing"
	"time"
)

// obj is larger than the runtime's tiny allocations, which share a block.
type obj struct {
	released bool
	_        [16]byte
}

// Tracking holds objects weakly: the entries of objects gone are dropped as
// more are tracked, and Close releases the live ones, once.
func TestTrackIsWeak(t *testing.T) {
	var c Closing
	keep := &obj{}
	Track(&c, keep, func(o *obj) { o.released = true })
	for range 10_000 {
		Track(&c, &obj{}, func(o *obj) { o.released = true })
		if len(c.objs)%1000 == 0 {
			runtime.GC()
		}
	}
	if n := len(c.objs); n > 2_000 {
		t.Errorf("%d entries kept for 1 live object and 10,000 gone", n)
	}
	if !c.Close() || c.Close() {
		t.Error("Close did not begin exactly once")
	}
	if !keep.released {
		t.Error("a live object was not released")
	}
	runtime.KeepAlive(keep)
}

// Close waits for the slow paths that entered to leave, and none enters
// after it began.
func TestCloseWaitsForLeave(t *testing.T) {
	var c Closing
	var w uint32
	if !c.Enter(&w) {
		t.Fatal("Enter refused on an open region")
	}
	left := make(chan time.Time, 1)
	go func() { time.Sleep(50 * time.Millisecond); left <- time.Now(); c.Leave(&w) }()
	c.Close()
	closed := time.Now()
	if at := <-left; closed.Before(at) {
		t.Error("Close returned before the waiter left")
	}
	if c.Enter(&w) {
		t.Error("Enter admitted a waiter after Close")
	}
}

func TestSentinel(t *testing.T) {
	a, b := Sentinel(), Sentinel()
	if a == b || a[0] != ^uint64(0) || a[4]&1 == 0 {
		t.Error("sentinels must be distinct lines of set bits")
	}
}

package shmlock

import (
	"testing"
	"time"
)

// A lease seen unchanged for leasePeriod is stale; a changed one, or one last
// seen more than lookoutGap ago (the beat may have wrapped), starts afresh.
func TestLookout(t *testing.T) {
	var o lookout
	if o.stale(probing | 41) {
		t.Fatal("a lease seen once is stale")
	}
	time.Sleep(leasePeriod + 5*time.Millisecond)
	if !o.stale(probing | 41) {
		t.Fatal("a lease unchanged for leasePeriod is not stale")
	}
	if o.stale(probing | 42) {
		t.Fatal("a changed lease is stale")
	}
	o.at, o.last = o.at.Add(-time.Hour), o.last.Add(-2*lookoutGap)
	if o.stale(probing | 42) {
		t.Fatal("a lease last seen long ago is stale at once")
	}
}

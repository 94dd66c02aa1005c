// Package fault names the steps of shmlock's protocols at which a process
// may die, so that tests can kill a real process at each of them.
//
// Code calls Hit(P) at every step. In a normal build Hit is an empty function
// that the compiler removes; built with -tags shmlock_fault, a process whose
// environment says SHMLOCK_FAULT=<point>:<n> SIGKILLs itself on its n-th pass
// through that point, and tests may also set a hook to run there.
//
// Points are enumerated (All), so a test can walk every one of them, and a
// point added without a test row fails that test.
package fault

// Point is a step of a protocol.
type Point uint8

// The points, in protocol order. Each says what has happened when it is hit.
const (
	// Mutex
	MutexAcquired            Point = iota // the acquiring CAS succeeded (any path)
	MutexBeforeRelease                    // the holder is about to release
	MutexReleasedBeforeWake               // released; sleepers not yet woken
	MutexWaiterBeforeSleep                // the waiters bit is set; not yet asleep
	MutexProberClaimed                    // a waiter took the prober role; not yet asleep
	MutexReservedBeforeWake               // released reserved for the sleepers; none woken yet
	MutexProberLeft                       // a prober gave up the role; no sleeper woken to take it
	MutexProbedDead                       // the holder was probed dead; no CAS yet
	MutexRecovered                        // the recovery CAS succeeded; not yet counted
	MutexRecoveredAtDeadline              // a waiter whose context ended took a dead holder's lock; not yet counted
	MutexWaiterQuit                       // a waiter that slept leaves without the lock; the wake it may hold not yet handed on

	// SeqLock
	SeqWriteOdd       // the sequence went odd; no data stored yet
	SeqWriteMidData   // between two data words of a store
	SeqReleaseState   // the state is stored; the sequence is still odd
	SeqReleaseEven    // the sequence is even; the lock is still held
	SeqReaderTookOver // a reader took a dead writer's lock; repair not started
	SeqRepairDirty    // a dead write was marked dirty; the sequence is still odd

	// Record
	RecordOdd       // the unpublished copy's sequence is odd; nothing copied
	RecordCopied    // the published value is copied into the unpublished copy
	RecordMidData   // between two data words of a store
	RecordEven      // the copy's sequence is even; not yet published
	RecordPublished // the index names the new copy; the lock is still held
	RecordReadIndex // a reader loaded the index (a hook point for slow readers)

	// RWMutex
	RWReaderAdded         // a reader added its share; the writers' word not yet loaded
	RWReaderDropped       // a reader that found a writer took its share back; not yet queued
	RWReaderShared        // a queued reader added its share under the writers' lock; lock not released
	RWReaderBeforeRelease // a reader is about to drop its share
	RWWriterDraining      // a writer holds the writers' lock; readers not yet drained
	RWWriterWaiting       // a draining writer found a live reader's share; not yet asleep
	RWReaderProbedDead    // a draining writer probed a reader dead; no CAS yet
	RWReaderFreed         // a dead reader's shares were freed; not yet counted

	// examples/cache
	CacheHandMoved    // a writer chose the way to evict and moved the hand; nothing written
	CacheEntryOdd     // the spare entry's sequence is odd; nothing stored
	CacheEntryWritten // the spare entry is whole (its sequence even); the map does not name it
	CachePublished    // the map names the new entry; the shard's lock is still held

	// Region
	RegionHeaderWritten // a creator wrote the header, layout included; not yet the ready magic

	// Region, robust mode
	RegionCloseMarked // Close marked its held words; its lists are still registered
	RegionRetireSwept // a retirement swept the dead IDs' words; their records are not cleared yet

	numPoints
)

var names = [numPoints]string{
	"mutex-acquired", "mutex-before-release", "mutex-released-before-wake",
	"mutex-waiter-before-sleep", "mutex-prober-claimed",
	"mutex-reserved-before-wake", "mutex-prober-left", "mutex-probed-dead", "mutex-recovered",
	"mutex-recovered-at-deadline", "mutex-waiter-quit",
	"seq-write-odd", "seq-write-mid-data", "seq-release-state", "seq-release-even",
	"seq-reader-took-over", "seq-repair-dirty",
	"record-odd", "record-copied", "record-mid-data", "record-even", "record-published", "record-read-index",
	"rw-reader-added", "rw-reader-dropped", "rw-reader-shared", "rw-reader-before-release",
	"rw-writer-draining", "rw-writer-waiting", "rw-reader-probed-dead", "rw-reader-freed",
	"cache-hand-moved", "cache-entry-odd", "cache-entry-written", "cache-published",
	"region-header-written", "region-close-marked", "region-retire-swept",
}

func (p Point) String() string {
	if p < numPoints {
		return names[p]
	}
	return "fault.Point(?)"
}

// All returns every point.
func All() []Point {
	ps := make([]Point, numPoints)
	for i := range ps {
		ps[i] = Point(i)
	}
	return ps
}

// Parse returns the point named s.
func Parse(s string) (Point, bool) {
	for i, n := range names {
		if n == s {
			return Point(i), true
		}
	}
	return 0, false
}

package shm

import (
	"fmt"
	"hash/fnv"
	"sort"
	"strconv"
)

// A Layout declares what a region holds: named objects, in order, each on
// lines of its own, so that no two share a line and no slice of data covers
// a lock. Lock and Data return each object's offset in the data area, the
// same in every process that declares the same Layout; put the Layout in
// Options.Layout, and Open records it (a fingerprint of the names and sizes,
// and of which are locks, in order) when it creates the region and refuses,
// with ErrLayout, a region created with another one, or without one. Bytes
// then hands out data objects only, and lock constructors accept only a lock
// object's offset. (Which kind of lock is not in the fingerprint: a
// constructor of another kind than the lock placed there fails with
// ErrInvalid.)
//
//	var l shm.Layout
//	mu := l.Lock("writers", shmlock.Size)
//	stats := l.Lock("stats", seqlock.RecordSize(64))
//	table := l.Data("table", 1<<20)
//	r, err := shm.Open("mycache", shm.Options{Layout: &l})
//	…
//	writers, err := shmlock.New(r, mu)
//	b, err := r.Bytes(table, 1<<20)
//
// Declare everything before Open: Open keeps a copy of the Layout as it is.
type Layout struct {
	objects []object
	names   map[string]bool
	size    int
	err     error // the first bad declaration, reported by Open
}

type object struct {
	name string
	off  int
	size int // all of it: n locks of each bytes, or the data's
	each int // a lock's bytes, rounded to lines; 0 for data
}

func (o object) lock() bool { return o.each > 0 }

// Lock declares a lock of size bytes (shmlock.Size, seqlock.SeqLockSize or
// seqlock.RecordSize) named name, and returns its offset.
func (l *Layout) Lock(name string, size int) int { return l.Locks(name, 1, size) }

// Locks declares n locks of size bytes each, named name, one after the
// other, and returns the first's offset: lock i is at that offset plus i
// times size rounded up to whole lines.
func (l *Layout) Locks(name string, n, size int) int {
	if n <= 0 || size <= 0 || size > maxObject || n > maxObject/roundLines(size) {
		return l.add(name, -1, 0)
	}
	each := roundLines(size)
	return l.add(name, n*each, each)
}

// maxObject bounds an object's bytes, and the whole layout's, so that no
// offset overflows.
const maxObject = maxInt / 4

// Data declares size bytes of data named name, and returns their offset.
func (l *Layout) Data(name string, size int) int { return l.add(name, size, 0) }

func roundLines(n int) int { return (n + LineSize - 1) / LineSize * LineSize }

// add declares an object of size bytes: data if each is 0, else locks of
// each bytes.
func (l *Layout) add(name string, size, each int) int {
	off := l.size
	switch {
	case l.err != nil:
		return off
	case name == "":
		l.err = fmt.Errorf("an object without a name")
	case size <= 0:
		l.err = fmt.Errorf("object %q of no bytes, or of more than %d", name, maxObject)
	case size > maxObject-l.size:
		l.err = fmt.Errorf("object %q makes the layout larger than %d bytes", name, maxObject)
	case l.names[name]:
		l.err = fmt.Errorf("two objects named %q", name)
	}
	if l.err != nil {
		return off
	}
	if l.names == nil {
		l.names = map[string]bool{}
	}
	l.names[name] = true
	l.objects = append(l.objects, object{name: name, off: off, size: size, each: each})
	l.size += roundLines(size)
	return off
}

// fingerprint is what the region records of l: a hash of its objects'
// names, sizes and kinds, in order; never 0, which means "no layout".
func (l *Layout) fingerprint() uint64 {
	h := fnv.New64a()
	for _, o := range l.objects {
		kind := "d"
		if o.lock() {
			kind = "l"
		}
		h.Write([]byte(strconv.Quote(o.name) + kind + strconv.Itoa(o.size) + "/" + strconv.Itoa(o.each) + ";"))
	}
	if f := h.Sum64(); f != 0 {
		return f
	}
	return 1
}

// at returns the object whose bytes include off, if any.
func (l *Layout) at(off int) (object, bool) {
	i := sort.Search(len(l.objects), func(i int) bool { return l.objects[i].off+l.objects[i].size > off })
	if i < len(l.objects) && l.objects[i].off <= off {
		return l.objects[i], true
	}
	return object{}, false
}

// checkData reports whether [off, off+n) lies within one data object.
func (l *Layout) checkData(off, n int) error {
	o, ok := l.at(off)
	switch {
	case !ok:
		return fmt.Errorf("offset %d is in no object of the layout", off)
	case o.lock():
		return fmt.Errorf("bytes [%d, %d) are lock %q's", off, off+n, o.name)
	case off+n > o.off+o.size:
		return fmt.Errorf("bytes [%d, %d) run past data %q, [%d, %d)", off, off+n, o.name, o.off, o.off+o.size)
	}
	return nil
}

// checkLock reports whether a lock of n bytes at off is one of the layout's
// locks, and fits it.
func (l *Layout) checkLock(off, n int) error {
	o, ok := l.at(off)
	switch {
	case !ok:
		return fmt.Errorf("offset %d is in no object of the layout", off)
	case !o.lock():
		return fmt.Errorf("offset %d is data %q, not a lock", off, o.name)
	case (off-o.off)%o.each != 0:
		return fmt.Errorf("offset %d is inside a lock of %q, not where one begins", off, o.name)
	case n > o.each:
		return fmt.Errorf("a lock of %d bytes at offset %d, where %q has %d a lock", n, off, o.name, o.each)
	}
	return nil
}

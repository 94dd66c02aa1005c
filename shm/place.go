package shm

import (
	"fmt"
	"sync/atomic"

	"github.com/shmlock/shmlock/internal/line"
	"github.com/shmlock/shmlock/internal/region"
)

// Placement tags are how tools find the locks in a region. Every lock lives
// at the start of a cache line of the data area (see lockLine), and the
// constructors of shmlock and seqlock tag that line by writing into its word
// 3, which no lock uses otherwise:
//
//	bits 48..63  tagMagic, 0x534c ("SL")
//	bits 40..47  kind: region.KindMutex, KindSeqLock, KindRecord or KindRWMutex
//	bits 16..39  the protected data's size in 8-byte words (0 for a Mutex)
//	bits  0..15  check: a hash of the line's offset and the bits above, so
//	             that the image of a tagged line stored at another offset
//	             (in a record's data, say) does not read as a tag
//
// A SeqLock's or Record's line holds its writers' Mutex too; its tag names
// the SeqLock or Record. placements lists the tags; the locks themselves
// never read them.
const (
	tagMagic = 0x534c
	tagWords = region.TagWords
	// placeLookBack bounds how far back Place looks for a lock whose data
	// the line would lie in.
	placeLookBack = 64 << 10
)

func makeTag(off int, k region.Kind, size int) uint64 {
	t := uint64(tagMagic)<<48 | uint64(k)<<40 | uint64(size/8)<<16
	return t | tagCheck(off, t)
}

func tagCheck(off int, t uint64) uint64 {
	return (uint64(off) ^ t>>16) * 0x9e3779b97f4a7c15 >> 48
}

// parseTag reads the tag word t of the line at off.
func parseTag(off int, t uint64) (region.Placement, bool) {
	k := region.Kind(t >> 40)
	if t>>48 != tagMagic || k < region.KindMutex || k > region.KindRWMutex || t&0xffff != tagCheck(off, t&^0xffff) {
		return region.Placement{}, false
	}
	p := region.Placement{Off: off, Kind: k, Size: int(t>>16&tagWords) * 8}
	if (k == region.KindMutex) != (p.Size == 0) {
		return region.Placement{}, false
	}
	return p, true
}

// place tags the line at off as holding a lock of kind k that protects size
// bytes (0 for a Mutex; at most region.MaxPlacedSize), for placements to find. The
// constructors of shmlock and seqlock call it. It is idempotent, and a Mutex
// placed on a SeqLock's or Record's line accepts that tag (it is that lock's
// writers' Mutex). It refuses, with ErrInvalid, a line tagged as another
// lock, one whose tag word holds something else (data placed over it), a
// line inside the data of a lock placed up to 64 KiB before it, and a
// read-only region.
func (r *Region) place(off int, k region.Kind, size int) error {
	fail := func(format string, args ...any) error {
		return &Error{Op: "place", Path: r.path, Kind: ErrInvalid, Detail: fmt.Sprintf(format, args...)}
	}
	if k < region.KindMutex || k > region.KindRWMutex || size < 0 || size%8 != 0 || size/8 > tagWords || (k == region.KindMutex) != (size == 0) {
		return fail("no %v of %d bytes can be placed", k, size)
	}
	l, err := r.lockLine(off)
	if err != nil {
		return err
	}
	if off+(region.Placement{Off: off, Kind: k, Size: size}).Bytes() > len(r.data) {
		return fail("a %v of %d bytes at offset %d does not fit the %d-byte data area", k, size, off, len(r.data))
	}
	if r.readOnly {
		return fail("the region is open read-only")
	}
	if r.layout != nil {
		if err := r.layout.checkLock(off, (region.Placement{Off: off, Kind: k, Size: size}).Bytes()); err != nil {
			return &Error{Op: "place", Path: r.path, Kind: ErrLayout, Detail: err.Error()}
		}
	}
	if p, ok := r.covering(off); ok {
		return fail("offset %d lies in the data of the %v of %d bytes at offset %d", off, p.Kind, p.Size, p.Off)
	}
	// The lock's line and data are written through the mapping: they get
	// storage first, so that a full file system is an error, not SIGBUS.
	hs := int64(len(r.m) - len(r.data))
	if err := r.allocate("place", hs+int64(off), int64((region.Placement{Off: off, Kind: k, Size: size}).Bytes()),
		fmt.Sprintf("a %v at offset %d", k, off)); err != nil {
		return err
	}
	want := makeTag(off, k, size)
	for {
		old := atomic.LoadUint64(&l[line.Tag])
		p, ok := parseTag(off, old)
		switch {
		case old == want, ok && k == region.KindMutex:
			return nil
		case old == 0, ok && p.Kind == region.KindMutex:
			// A fresh line, or the Mutex a SeqLock or Record
			// constructor placed first.
			if atomic.CompareAndSwapUint64(&l[line.Tag], old, want) {
				return nil
			}
		case ok:
			return fail("offset %d holds a %v of %d bytes, not a %v of %d bytes", off, p.Kind, p.Size, k, size)
		default:
			return fail("offset %d is not the line of a lock: its word 3 holds %#x, no placement tag (data placed over it?)", off, old)
		}
	}
}

// placement returns the lock tagged at off, if any. A tag whose lock would
// not fit the data area is no tag (a hostile or corrupt file).
func (r *Region) placement(off int) (region.Placement, bool) {
	l, err := r.lockLine(off)
	if err != nil {
		return region.Placement{}, false
	}
	p, ok := parseTag(off, atomic.LoadUint64(&l[line.Tag]))
	if !ok || p.Bytes() > len(r.data)-off {
		return region.Placement{}, false
	}
	return p, true
}

// covering returns the lock, placed up to placeLookBack bytes before off,
// whose data the line at off lies in: the nearest lock below off, if its data
// reaches off. It reads backwards, and skips the pages the file holds no data
// for (reading a hole through the mapping would allocate it).
func (r *Region) covering(off int) (region.Placement, bool) {
	lo := max(0, off-placeLookBack)
	for page := (off - LineSize) / pageSize * pageSize; off > 0 && page >= 0 && page+pageSize > lo; page -= pageSize {
		if !r.holdsData(page) {
			continue
		}
		for o := min(off, page+pageSize) - LineSize; o >= max(page, lo); o -= LineSize {
			if p, ok := r.placement(o); ok {
				return p, off < o+p.Bytes()
			}
		}
	}
	return region.Placement{}, false
}

// holdsData reports whether the file holds data for the data area's page at
// off (a multiple of the page size); true where the file system cannot tell.
func (r *Region) holdsData(off int) bool {
	at := int64(len(r.m)-len(r.data)) + int64(off)
	d, ok := seekData(int(r.f.Fd()), at)
	return ok && d < at+pageSize
}

// placements lists the locks tagged in the data area, in offset order. It
// reads only, and skips the holes of a sparse region file, so that listing
// a large region does not bring its untouched pages into memory.
func (r *Region) placements() []region.Placement {
	var ps []region.Placement
	r.eachPlacement(nil, func(p region.Placement) bool { ps = append(ps, p); return true })
	return ps
}

// eachPlacement calls f with each lock tagged in the data area, in offset
// order, as placements lists them, until f returns false or stop (if not nil)
// is set; it reports whether it went through them all.
func (r *Region) eachPlacement(stop *atomic.Bool, f func(region.Placement) bool) bool {
	n := 0
	for off := 0; off+LineSize <= len(r.data); {
		start, end := r.dataRange(off)
		for off = start; off < end && off+LineSize <= len(r.data); {
			if n++; n%1024 == 0 && stop != nil && stop.Load() {
				return false
			}
			p, ok := r.placement(off)
			if !ok {
				off += LineSize
				continue
			}
			if !f(p) {
				return false
			}
			off += p.Bytes() // the lock's data lines hold no tags
		}
		off = max(off, end)
	}
	return true
}

// dataRange returns the first range [start, end) of the data area at or
// after off that the file holds data for (a hole reads as zeros, and so holds
// no tag), in whole lines. Where the file system cannot tell, it is all data.
func (r *Region) dataRange(off int) (start, end int) {
	hs := int64(len(r.m) - len(r.data))
	fd := int(r.f.Fd())
	d, ok := seekData(fd, hs+int64(off))
	if !ok {
		return len(r.data), len(r.data) // no data after off
	}
	h := seekHole(fd, d, int64(len(r.m)))
	start = int(d-hs) / LineSize * LineSize
	end = min((int(h-hs)+LineSize-1)/LineSize*LineSize, len(r.data))
	return start, end
}

// An owner ID fills the owner field of a lock word exactly.
var _ = [1]struct{}{}[line.OwnerMask-(1<<idBits-1)]

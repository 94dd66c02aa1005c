// Package shm maps a region file that several processes share, and knows who
// is attached to it.
//
// A region is a file (in /dev/shm by default) with a versioned header, a
// table of the processes attached to it, and a data area where the caller
// places locks and data at offsets of its choosing. Open creates and
// initialises a region exactly once, however many processes race to open the
// same new path, and validates the header of an existing one; bad files are
// refused with a typed error (see Error), never a crash.
//
// Every Region holds a slot of the process table for as long as it is open,
// and a file lock on that slot. Locks in the region name their holder by that
// slot (an owner ID) or by a thread the slot records, and the lock packages
// turn the owner field of a lock word back into a verdict on whether its
// process is alive (a Holder): the basis of recovery from dead lock holders.
//
// # Sharing between users
//
// Opening a region needs read and write permission on its file (OpenReadOnly,
// read permission); Options.Perm and Options.Group set them when Open creates
// it. Open never opens an existing file with O_CREAT, so fs.protected_regular
// does not refuse another user's region in a sticky directory such as
// /dev/shm. Every process that can write the file is trusted with all of it:
// it can forge or break any lock, rewrite any data, or truncate the file
// under every mapping. A read-only opener changes nothing, but can hold the
// byte locks that Open waits for (ErrBusy, or a table that looks full).
//
// # Storage
//
// A region file is sparse. Everything gets storage before it is first
// touched (the header, the process table, each lock and its data when it is
// made, the bytes of Bytes when they are handed out), so a full file system
// is ErrNoSpace, not SIGBUS.
package shm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/shmlock/shmlock/internal/closing"
	"github.com/shmlock/shmlock/internal/fault"
	"github.com/shmlock/shmlock/internal/owner"
)

// Dir is where a bare region name is placed.
const Dir = "/dev/shm"

// Options tune Open.
type Options struct {
	// Size is the number of data bytes the caller needs. A new region is
	// created with exactly this many; an existing region must have at least
	// this many (else ErrTooSmall). Required to create a region.
	Size int
	// Perm is the file mode of a new region file; 0 means 0600. It is set
	// exactly, regardless of the umask, when Open creates the file, and
	// never changed later. Every process that opens the region needs read
	// and write permission (OpenReadOnly, read permission).
	Perm fs.FileMode
	// Group, if not 0, is the group (a gid) a new region file is given,
	// with Perm: 0o660 and a group shares a region among that group's
	// users. The creating process must be in the group (or privileged).
	Group int
	// Slots is the size of the process table of a new region: how many
	// Regions (processes, or several opens in one process) may be attached
	// at once. 0 means DefaultSlots; at most MaxSlots.
	Slots int
	// NoCreate makes Open fail (with fs.ErrNotExist) rather than create a
	// missing region.
	NoCreate bool
	// InitTimeout bounds the wait for another process that is initialising
	// or validating the region; 0 means 10 s.
	InitTimeout time.Duration
	// Allocate gives a new region's whole data area storage when it is
	// created, so that a full file system fails Open rather than a later
	// Bytes or lock constructor. It costs that much memory of the file
	// system (tmpfs: RAM) at once.
	Allocate bool
	// Mode is the locking protocol: the mode a new region is created in,
	// and the mode an existing one must have (else ErrMode). ModeAuto,
	// the zero value, creates in DefaultMode and opens in whatever mode
	// the region was created in.
	Mode Mode
	// Layout declares the region's objects (see Layout): the region is
	// created with it, and an existing one must have been created with
	// the same (else ErrLayout). The data area is then at least the
	// Layout's size; Size may be 0. Without a Layout, Open takes an
	// existing region as it is, with or without one.
	Layout *Layout
}

// Region is one process's attachment to a region file. Its methods are safe
// for concurrent use, except Close, which must not race with any use of the
// region or of locks placed in it (its memory is unmapped).
type Region struct {
	path  string
	f     *os.File
	m     []byte       // the whole file, mapped
	unmap func() error // undoes the mapping
	data  []byte
	slots int
	id    uint32 // this attachment's owner ID
	self  owner.Process
	mode  Mode

	robust *robustLists // ModeRobust: this attachment's robust lists

	readOnly bool // mapped read-only, attached to no slot (OpenReadOnly)

	layout *Layout // the objects declared at Open (Options.Layout), or nil

	watches watches
	life    closing.Closing // Close, as the objects made in the region see it
}

func init() { closing.Of = func(r any) *closing.Closing { return &r.(*Region).life } }

// resolve turns a region name into the file's path: a name without a slash
// is a file in Dir; one with a slash is a path.
func resolve(name string) (string, error) {
	if name == "" || strings.ContainsRune(name, 0) {
		return "", &Error{Op: "open", Path: name, Kind: ErrInvalid, Detail: "empty or malformed name"}
	}
	if !strings.ContainsRune(name, '/') {
		if name == "." || name == ".." {
			return "", &Error{Op: "open", Path: name, Kind: ErrInvalid, Detail: "not a file name"}
		}
		return filepath.Join(Dir, name), nil
	}
	return filepath.Clean(name), nil
}

// Open opens the region at name, creating and initialising it if it does not
// exist, and attaches this process to it. A name without a slash is a file
// in Dir ("cache" is /dev/shm/cache); one with a slash is a path.
func Open(name string, opt Options) (*Region, error) {
	path, err := resolve(name)
	if err != nil {
		return nil, err
	}
	return openRetry(path, opt, false)
}

// OpenReadOnly maps the existing region at name (see Open) read-only, to
// look at it without changing it: it creates nothing, claims no slot of the
// process table, and writes nothing to the file (the mapping would fault if
// anything tried). Bytes, Attachments and the locks' Inspect functions work
// on it; locks cannot be taken through it. It waits, like Open, while
// another process initialises the region.
func OpenReadOnly(name string) (*Region, error) {
	path, err := resolve(name)
	if err != nil {
		return nil, err
	}
	return openRetry(path, Options{NoCreate: true}, true)
}

func openRetry(path string, opt Options, readOnly bool) (*Region, error) {
	for range 10 {
		if r, err := open(path, opt, readOnly); err != errReplaced {
			if err == nil && r.robust != nil {
				// Open released the lock on byte 0, which the
				// retirement needs at its end.
				r.startRetiring()
			}
			return r, err
		}
	}
	return nil, &Error{Op: "open", Path: path, Kind: ErrBusy, Detail: "the file was replaced while opening, ten times over"}
}

// errReplaced: the path named another file once we held the init lock.
var errReplaced = errors.New("replaced while opening")

func open(path string, opt Options, readOnly bool) (*Region, error) {
	fail := func(kind error, detail string, err error) (*Region, error) {
		return nil, &Error{Op: "open", Path: path, Kind: kind, Detail: detail, Err: unwrapPath(err)}
	}
	if !supported {
		return fail(ErrUnsupported, "regions need Linux (OFD locks, shared futexes)", nil)
	}
	if opt.Size < 0 {
		return fail(ErrInvalid, fmt.Sprintf("negative size %d", opt.Size), nil)
	}
	if l := opt.Layout; l != nil {
		if l.err != nil {
			return fail(ErrInvalid, "layout: "+l.err.Error(), nil)
		}
		// The data area holds the whole layout. The region keeps a copy:
		// a caller's later declarations change nothing of it.
		opt.Size = max(opt.Size, l.size)
		opt.Layout = &Layout{objects: slices.Clone(l.objects), size: l.size}
	}
	slots := opt.Slots
	if slots == 0 {
		slots = DefaultSlots
	}
	if slots < 1 || slots > MaxSlots {
		return fail(ErrInvalid, fmt.Sprintf("slots %d not in 1..%d", opt.Slots, MaxSlots), nil)
	}
	switch opt.Mode {
	case ModeAuto, ModeProbe:
	case ModeRobust:
		if !robustAvailable() && !readOnly {
			return fail(ErrMode, "robust mode is not available on this system (no robust futex lists): use ModeProbe", nil)
		}
	default:
		return fail(ErrInvalid, fmt.Sprintf("unknown mode %d", opt.Mode), nil)
	}
	perm := opt.Perm
	if perm == 0 {
		perm = 0o600
	}
	if perm&^fs.ModePerm != 0 {
		return fail(ErrInvalid, fmt.Sprintf("mode %v: only permission bits", opt.Perm), nil)
	}
	if opt.Group < 0 {
		return fail(ErrInvalid, fmt.Sprintf("group %d", opt.Group), nil)
	}
	initTimeout := opt.InitTimeout
	if initTimeout == 0 {
		initTimeout = 10 * time.Second
	}

	mayCreate := !opt.NoCreate && !readOnly
	f, created, oerr := openFile(path, mayCreate && opt.Size > 0, perm, opt.Group, readOnly)
	if oerr != nil {
		if mayCreate && opt.Size == 0 && errors.Is(oerr, fs.ErrNotExist) {
			return fail(ErrInvalid, "Options.Size is required to create a region", nil)
		}
		return nil, oerr
	}
	r := &Region{path: path, f: f, slots: slots, self: owner.Self(), readOnly: readOnly, layout: opt.Layout}
	ok := false
	defer func() {
		if !ok {
			r.release()
		}
	}()
	if fi, err := f.Stat(); err != nil {
		return fail(nil, "", err)
	} else if !fi.Mode().IsRegular() {
		return fail(ErrNotRegion, "it is "+kindOf(fi.Mode()), nil)
	}
	fd := int(f.Fd())

	// Creation, initialisation and validation happen under the lock on
	// byte 0, so racing openers initialise once and nobody validates a
	// header that is being written. The kernel drops the lock if we die
	// holding it, and the magic tells the next opener to start over.
	// A reader takes the lock shared: it only keeps initialisers out.
	initLock := exclusive
	if readOnly {
		initLock = shared
	}
	if err := lockWait(fd, initLock, 0, initTimeout); err != nil {
		if errors.Is(err, errTimeout) {
			return fail(ErrBusy, fmt.Sprintf("initialisation lock held for %v", initTimeout), nil)
		}
		return fail(nil, "initialisation lock", err)
	}
	defer unlockByte(fd, 0)

	fi, err := f.Stat()
	if err != nil {
		return fail(nil, "", err)
	}
	// The path may have been removed, and perhaps created anew, between
	// our open and our lock: then we hold a file nobody else will open,
	// and would share no lock with the processes using the new one.
	if pi, err := os.Lstat(path); err != nil || !os.SameFile(fi, pi) {
		return nil, errReplaced // the deferred calls unlock, then close
	}
	var hdr [headerBytes]byte
	if fi.Size() > 0 {
		if _, err := f.ReadAt(hdr[:min(int64(len(hdr)), fi.Size())], 0); err != nil {
			return fail(nil, "reading header", err)
		}
	}
	switch {
	case fi.Size() == 0 && opt.NoCreate:
		return fail(ErrNotRegion, "file is empty", nil)
	case readOnly && fi.Size() >= 8 && string(hdr[:8]) == magicInit:
		return fail(ErrNotRegion, "not initialised: its creator died while initialising it (the next Open initialises it)", nil)
	case fi.Size() == 0, fi.Size() >= 8 && string(hdr[:8]) == magicInit:
		// New, or a creator died mid-initialisation (it would still hold
		// the lock we now hold otherwise): initialise from scratch. The
		// "initialising" magic is ours alone, so no foreign data is lost.
		if opt.Size == 0 {
			return fail(ErrInvalid, "Options.Size (or Options.Layout) is required to create a region", nil)
		}
		r.mode = opt.Mode
		if r.mode == ModeAuto {
			r.mode = DefaultMode()
		}
		if err := r.initialise(opt.Size, opt.Allocate); err != nil {
			if created {
				// Nobody else can have used it: it never had a
				// header.
				r.removeIfSame()
			}
			return nil, asError(err, "open", path, "initialising")
		}
	default:
		// A declared layout is checked before the size: a region made
		// for another one is too small, or not, by chance.
		want := opt.Size
		if r.layout != nil {
			want = 0
		}
		dataSize, mode, err := validate(hdr[:], fi.Size(), want)
		if err != nil {
			err.Op, err.Path = "open", path
			return nil, err
		}
		if opt.Mode != ModeAuto && opt.Mode != mode {
			return fail(ErrMode, fmt.Sprintf("the region was created in %v mode, and is asked for in %v mode: "+
				"one region, one protocol (open it with ModeAuto, or the same mode)", mode, opt.Mode), nil)
		}
		if mode == ModeRobust && !readOnly && !robustAvailable() {
			return fail(ErrMode, "the region was created in robust mode, which this system does not support", nil)
		}
		// An opener that declares no layout (a tool such as shmlock
		// break) takes the region as it is.
		if fp := binary.NativeEndian.Uint64(hdr[offLayout:]); r.layout != nil && fp != r.fingerprint() {
			return fail(ErrLayout, layoutMismatch(fp, r.fingerprint()), nil)
		}
		if opt.Size > dataSize {
			return fail(ErrTooSmall, fmt.Sprintf("data area is %d bytes, %d asked", dataSize, opt.Size), nil)
		}
		r.mode = mode
		slots = int(binary.NativeEndian.Uint32(hdr[offSlots:]))
		if err := r.mapFile(slots, dataSize); err != nil {
			return fail(nil, "mmap", err)
		}
	}
	if readOnly {
		ok = true
		return r, nil
	}
	// The header and the process table are written through the mapping:
	// they must have storage (a region made sparse by an older version
	// gets it here).
	if err := r.allocate("open", 0, int64(len(r.m)-len(r.data)), "the header and process table"); err != nil {
		return nil, err
	}
	if err := r.attach(); err != nil {
		if err == ErrFull {
			return fail(ErrFull, fmt.Sprintf("all %d slots are held by attached processes", r.slots), nil)
		}
		var e *Error
		if errors.As(err, &e) {
			e.Op, e.Path = "open", path
			return nil, e
		}
		return fail(nil, "attaching", err)
	}
	ok = true
	return r, nil
}

// initialise writes a fresh header. The caller holds the lock on byte 0.
func (r *Region) initialise(dataSize int, all bool) error {
	hs := headerSizeFor(r.slots)
	// Mark the file first, before it has a size: a crash at any later step
	// leaves either an empty file or this mark, and both mean "initialise".
	if err := r.f.Truncate(0); err != nil {
		return err
	}
	if _, err := r.f.WriteAt([]byte(magicInit), 0); err != nil {
		return r.noSpaceIn("open", pageSize, "the header", err)
	}
	if err := r.f.Truncate(int64(hs) + int64(dataSize)); err != nil {
		return err
	}
	if err := r.allocate("open", 0, int64(hs), "the header and process table"); err != nil {
		return err
	}
	if all {
		if err := r.allocate("open", int64(hs), int64(dataSize), "the data area (Options.Allocate)"); err != nil {
			return err
		}
	}
	if err := r.mapFile(r.slots, dataSize); err != nil {
		return err
	}
	h := r.m[:headerBytes]
	ne := binary.NativeEndian
	ne.PutUint32(h[offVersion:], Version)
	ne.PutUint32(h[offHeaderSize:], uint32(hs))
	ne.PutUint64(h[offDataSize:], uint64(dataSize))
	ne.PutUint32(h[offSlots:], uint32(r.slots))
	ne.PutUint32(h[offMode:], uint32(r.mode))
	ne.PutUint64(h[offCreated:], uint64(time.Now().UnixNano()))
	ne.PutUint32(h[offCreator:], uint32(r.self.PID))
	ne.PutUint32(h[offByteOrder:], byteOrderMark)
	ne.PutUint64(h[offLayout:], r.fingerprint())
	fault.Hit(fault.RegionHeaderWritten)
	// The ready magic goes last: an opener that finds it finds the rest.
	copy(h[offMagic:], magicReady)
	return nil
}

// fingerprint is what the header records of r's layout: 0 for none.
func (r *Region) fingerprint() uint64 {
	if r.layout == nil {
		return 0
	}
	return r.layout.fingerprint()
}

// CheckLayout reports whether the region was made for layout l, as Open
// checks the Layout it is given: for a process that opened the region
// without one (OpenReadOnly, or Options with no Layout), such as a tool
// that learnt the layout from the data and must not trust data that could
// describe another. A mismatch is an *Error of Kind ErrLayout. It reads the
// header from the file, not the mapping, so a file cut short is an error.
func (r *Region) CheckLayout(l *Layout) error {
	const op = "check layout"
	if err := r.check(op); err != nil {
		return err
	}
	if l == nil {
		return &Error{Op: op, Path: r.path, Kind: ErrInvalid, Detail: "no Layout"}
	}
	if l.err != nil {
		return &Error{Op: op, Path: r.path, Kind: ErrInvalid, Detail: "layout: " + l.err.Error()}
	}
	var b [8]byte
	if _, err := r.f.ReadAt(b[:], offLayout); err != nil {
		return &Error{Op: op, Path: r.path, Err: err}
	}
	if have, want := binary.NativeEndian.Uint64(b[:]), l.fingerprint(); have != want {
		return &Error{Op: op, Path: r.path, Kind: ErrLayout, Detail: layoutMismatch(have, want)}
	}
	return nil
}

// layoutMismatch says how the layout recorded (have) and the one declared
// (want) differ.
func layoutMismatch(have, want uint64) string {
	switch {
	case have == 0:
		return "the region was created without a Layout, and is opened with one"
	}
	return fmt.Sprintf("the region was created with another Layout (fingerprint %#x, this one's %#x)", have, want)
}

// removeIfSame removes the region file, if the path still names it.
func (r *Region) removeIfSame() {
	fi, err := r.f.Stat()
	if pi, perr := os.Lstat(r.path); err == nil && perr == nil && os.SameFile(fi, pi) {
		os.Remove(r.path)
	}
}

// asError makes err an *Error of op on path, keeping one that is already.
func asError(err error, op, path, detail string) error {
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	return &Error{Op: op, Path: path, Detail: detail, Err: unwrapPath(err)}
}

// validate checks an existing header against the file size and the caller's
// needs and returns the data size and the mode.
func validate(h []byte, fileSize int64, want int) (int, Mode, *Error) {
	bad := func(kind error, format string, args ...any) (int, Mode, *Error) {
		return 0, 0, &Error{Kind: kind, Detail: fmt.Sprintf(format, args...)}
	}
	ne := binary.NativeEndian
	if fileSize < headerBytes {
		if string(h[:min(len(magicReady), int(fileSize))]) != magicReady[:min(len(magicReady), int(fileSize))] {
			return bad(ErrNotRegion, "%d-byte file without the region magic", fileSize)
		}
		return bad(ErrTruncated, "file is %d bytes, shorter than the %d-byte header", fileSize, headerBytes)
	}
	if string(h[offMagic:offMagic+8]) != magicReady {
		return bad(ErrNotRegion, "magic is %q, want %q", h[offMagic:offMagic+8], magicReady)
	}
	if bo := ne.Uint32(h[offByteOrder:]); bo != byteOrderMark {
		return bad(ErrNotRegion, "byte-order mark %#x: written by a machine of another byte order, or corrupt", bo)
	}
	if v := ne.Uint32(h[offVersion:]); v != Version {
		return bad(ErrVersion, "layout version %d; this package reads version %d", v, Version)
	}
	slots := ne.Uint32(h[offSlots:])
	if slots < 1 || slots > MaxSlots {
		return bad(ErrCorrupt, "process table of %d slots (1..%d allowed)", slots, MaxSlots)
	}
	hs := ne.Uint32(h[offHeaderSize:])
	if int(hs) != headerSizeFor(int(slots)) {
		return bad(ErrCorrupt, "header size %d, but %d slots need %d", hs, slots, headerSizeFor(int(slots)))
	}
	mode := Mode(ne.Uint32(h[offMode:]))
	if mode != ModeProbe && mode != ModeRobust {
		return bad(ErrCorrupt, "unknown locking mode %d", mode)
	}
	ds := ne.Uint64(h[offDataSize:])
	if ds > uint64(maxInt-int(hs)) {
		return bad(ErrCorrupt, "data size %d is impossible", ds)
	}
	total := int64(hs) + int64(ds)
	if fileSize < total {
		return bad(ErrTruncated, "file is %d bytes, its header says %d", fileSize, total)
	}
	if fileSize > total {
		return bad(ErrCorrupt, "file is %d bytes, its header says %d", fileSize, total)
	}
	if want > int(ds) {
		return bad(ErrTooSmall, "data area is %d bytes, %d asked", ds, want)
	}
	return int(ds), mode, nil
}

const maxInt = int(^uint(0) >> 1)

func (r *Region) mapFile(slots, dataSize int) error {
	r.slots = slots
	hs := headerSizeFor(slots)
	if r.mode == ModeRobust && !r.readOnly {
		if err := r.mapRobust(hs + dataSize); err != nil {
			return err
		}
	} else {
		m, unmap, err := mapShared(r.f, hs+dataSize, r.readOnly)
		if err != nil {
			return err
		}
		r.m, r.unmap = m, unmap
	}
	r.data = r.m[hs : hs+dataSize : hs+dataSize]
	return nil
}

// attach claims a free slot of the process table: one whose liveness lock
// nobody holds. Holding that lock is what makes the slot ours; the kernel
// releases it when this process dies, which is what a probe reads.
func (r *Region) attach() error {
	// In robust mode a free slot may be held for a moment by a process
	// retiring its dead claimant's thread IDs (robust_linux.go): look again
	// for a while before calling the table full.
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		err := r.claim()
		if err != ErrFull || r.mode != ModeRobust || time.Now().After(deadline) || !r.retiring() {
			return err
		}
	}
}

// retiring reports whether a retirement holds the liveness byte of a slot:
// a shared lock, where a claimant holds an exclusive one.
func (r *Region) retiring() bool {
	for s := 1; s <= r.slots; s++ {
		if typ, err := queryLock(int(r.f.Fd()), int64(s*entryBytes)); err == nil && typ == shared {
			return true
		}
	}
	return false
}

// claim claims a free slot of the process table (see attach).
func (r *Region) claim() error {
	fd := int(r.f.Fd())
	// Round-robin from the count of attachments so far (we hold the lock
	// on byte 0, so it is ours to read): a slot's incarnation, and with
	// it the owner IDs, then wraps as late as possible. In robust mode a
	// first round passes over the slots that still record the thread IDs
	// of a claimant that died without Close, whose claim costs a sweep of
	// the region (retireClaimed); the background retirement clears them.
	first := int(atomic.LoadUint64(r.u64(offAttaches)) % uint64(r.slots))
	var table []byte
	if r.mode == ModeRobust {
		table, _ = r.readTable()
	}
	for i := range 2 * r.slots {
		s := 1 + (first+i)%r.slots
		if i < r.slots && table != nil && recordsAnyTID(table[(s-1)*entryBytes:]) {
			continue
		}
		if i >= r.slots && table == nil {
			break
		}
		switch err := tryLockByte(fd, int64(s*entryBytes)); {
		case err == nil:
		case errors.Is(err, errLocked):
			continue
		default:
			return err
		}
		e := r.entry(s)
		var taken map[uint32]bool
		if r.mode == ModeRobust {
			// The previous claimant's thread IDs, if it died
			// without Close, are retired (their words marked)
			// before this claim drops them; what the table records
			// then is taken.
			r.retireClaimed(s)
			var err error
			if taken, err = r.recordedTIDs(); err != nil {
				unlockByte(fd, int64(s*entryBytes))
				return err
			}
		}
		// The previous claimant's thread IDs are gone (ntids first, for
		// a slot whose claimant recorded none), then the incarnation
		// changes: from here on every owner word naming the slot's
		// previous claimant is judged dead without looking at the
		// fields below, which we are about to overwrite. (That claimant
		// is indeed gone: we could not hold its lock.)
		atomic.StoreUint32(e.ntids, 0)
		inc := (atomic.LoadUint32(e.incarnation) + 1) & incarnationMask
		atomic.StoreUint32(e.incarnation, inc)
		atomic.StoreInt32(e.pid, r.self.PID)
		atomic.StoreUint64(e.start, r.self.Start)
		atomic.StoreUint64(e.pidns, r.self.NS)
		atomic.StoreUint64(e.timens, r.self.TimeNS)
		atomic.StoreInt64(e.attached, time.Now().UnixNano())
		atomic.AddUint64(r.u64(offAttaches), 1)
		r.id = makeID(uint32(s), inc)
		if r.mode == ModeRobust {
			// Its first thread ID is recorded before Open returns,
			// so before any lock word can name it.
			return r.startRobust(taken)
		}
		return nil
	}
	return ErrFull
}

type entry struct {
	incarnation *uint32
	pid         *int32
	start       *uint64
	pidns       *uint64
	attached    *int64
	timens      *uint64
	ntids       *uint32
	tids        *[maxTIDs]uint32
}

func (r *Region) entry(slot int) entry {
	b := r.m[slot*entryBytes:]
	return entry{
		incarnation: (*uint32)(unsafe.Pointer(&b[entIncarnation])),
		pid:         (*int32)(unsafe.Pointer(&b[entPID])),
		start:       (*uint64)(unsafe.Pointer(&b[entStart])),
		pidns:       (*uint64)(unsafe.Pointer(&b[entPIDNS])),
		attached:    (*int64)(unsafe.Pointer(&b[entAttached])),
		timens:      (*uint64)(unsafe.Pointer(&b[entTimeNS])),
		ntids:       (*uint32)(unsafe.Pointer(&b[entNTIDs])),
		tids:        (*[maxTIDs]uint32)(unsafe.Pointer(&b[entTIDs])),
	}
}

func (r *Region) u64(off int) *uint64 { return (*uint64)(unsafe.Pointer(&r.m[off])) }

// ownerID returns this attachment's owner ID: its slot of the process table and
// the slot's incarnation. In ModeProbe it is the value that locks in this
// region record as their holder while this process holds them; in
// ModeRobust they record a thread ID instead (see ownerFor).
func (r *Region) ownerID() uint32 { return r.id }

// Mode returns the region's locking protocol.
func (r *Region) Mode() Mode { return r.mode }

// ownerFor returns the value that the owner field of the lock at line off
// holds while this attachment holds it: its owner ID in ModeProbe; in
// ModeRobust the thread ID of the robust list that links the line, which
// OwnerFor links on its first call for the line. The lock constructors call
// it; it fails on a read-only or closed region, and in ModeRobust with
// ErrLimit if the attachment, or the process, has locks on more lines than
// its lists hold.
func (r *Region) ownerFor(off int) (uint32, error) {
	if r.life.Closed() {
		return 0, &Error{Op: "lock", Path: r.path, Kind: ErrClosed}
	}
	if r.readOnly {
		return 0, &Error{Op: "lock", Path: r.path, Kind: ErrInvalid, Detail: "the region is open read-only"}
	}
	if _, err := r.lockLine(off); err != nil {
		return 0, err
	}
	if r.mode != ModeRobust {
		return r.id, nil
	}
	return r.linkRobust(off)
}

// isReadOnly reports whether r was opened with OpenReadOnly.
func (r *Region) isReadOnly() bool { return r.readOnly }

// Path returns the region file's path.
func (r *Region) Path() string { return r.path }

// Size returns the size of the data area in bytes.
func (r *Region) Size() int { return len(r.data) }

// numSlots returns the size of the process table.
func (r *Region) numSlots() int { return r.slots }

// Bytes returns the n data bytes at offset off of the data area. The slice
// aliases the shared mapping: other processes see writes to it at once, and
// it must not be used after Close. Take it once: each call makes two
// system calls, and takes time in proportion to the pages it covers.
//
// A region file is sparse, and the first store to a page that has no
// storage raises SIGBUS, which ends the process, when the file system is
// full (a container's /dev/shm is 64 MiB by default, shared by all in it).
// So Bytes gives the bytes storage before it returns them, and fails with an
// error matching ErrNoSpace and syscall.ENOSPC instead; what has storage
// already costs no space. Through OpenReadOnly it cannot: there, bytes that
// no writer's Bytes covered may fault when read on a full file system.
// Bytes also fails, with ErrTruncated, if something shrank the file below
// the size of the mapping (a page past the end of the file faults too);
// nothing stops that happening after it returns, so a program that shares
// a region with untrusted writers of its file uses debug.SetPanicOnFault
// around its reads.
//
// In a region opened with a Layout, the bytes must lie in one data object of
// it (else ErrLayout): a lock's bytes, and bytes that no object declares
// (past the layout, or between objects), are not handed out.
func (r *Region) Bytes(off, n int) ([]byte, error) {
	if r.layout != nil {
		if err := r.layout.checkData(off, n); err != nil {
			return nil, &Error{Op: "slice", Path: r.path, Kind: ErrLayout, Detail: err.Error()}
		}
	}
	b, err := r.span(off, n)
	if err != nil {
		return nil, err
	}
	if err := r.check("slice"); err != nil {
		return nil, err
	}
	if !r.readOnly && n > 0 {
		hs := len(r.m) - len(r.data)
		if err := r.allocate("slice", int64(hs+off), int64(n), fmt.Sprintf("data bytes [%d, %d)", off, off+n)); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// span is Bytes without the layout's check or the file's: a lock's own
// bytes, for the lock packages (region.Plumbing), which gave them storage
// when they placed the lock.
func (r *Region) span(off, n int) ([]byte, error) {
	if err := r.inRange("slice", off, n); err != nil {
		return nil, err
	}
	return r.data[off : off+n : off+n], nil
}

// inRange checks that [off, off+n) lies in the data area of an open region.
func (r *Region) inRange(op string, off, n int) error {
	if r.life.Closed() {
		return &Error{Op: op, Path: r.path, Kind: ErrClosed}
	}
	if off < 0 || n < 0 || off > len(r.data) || n > len(r.data)-off {
		return &Error{Op: op, Path: r.path, Kind: ErrInvalid,
			Detail: fmt.Sprintf("bytes [%d, %d+%d) outside the %d-byte data area", off, off, n, len(r.data))}
	}
	return nil
}

// lockLine returns the cache line at offset off of the data area as eight 64-bit
// words, for placing a lock. off must be a multiple of LineSize.
func (r *Region) lockLine(off int) (*[LineSize / 8]uint64, error) {
	if off%LineSize != 0 {
		return nil, &Error{Op: "line", Path: r.path, Kind: ErrInvalid,
			Detail: fmt.Sprintf("offset %d is not a multiple of %d: a lock needs a cache line of its own", off, LineSize)}
	}
	if err := r.inRange("line", off, LineSize); err != nil {
		return nil, err
	}
	if r.readOnly && !r.holdsData(off/pageSize*pageSize) {
		// Reading a hole through a mapping gives it storage (tmpfs), or
		// raises SIGBUS if the file system is full: a line the file
		// holds no data for reads as zeros, and is never written
		// through a read-only region.
		return &zeroLine, nil
	}
	b := r.data[off : off+LineSize]
	// The data area starts on a page boundary, so the line is 64-byte
	// aligned in memory, as 64-bit atomics need.
	return (*[LineSize / 8]uint64)(unsafe.Pointer(&b[0])), nil
}

// zeroLine is what Line gives a read-only region for a line of a hole.
var zeroLine [LineSize / 8]uint64

// check reports whether the region file still has the size this mapping
// needs: ErrTruncated if something shrank it.
func (r *Region) check(op string) error {
	if r.life.Closed() {
		return &Error{Op: op, Path: r.path, Kind: ErrClosed}
	}
	fi, err := r.f.Stat()
	if err != nil {
		return &Error{Op: op, Path: r.path, Err: err}
	}
	if fi.Size() < int64(len(r.m)) {
		return &Error{Op: op, Path: r.path, Kind: ErrTruncated,
			Detail: fmt.Sprintf("file is %d bytes, the mapping needs %d", fi.Size(), len(r.m))}
	}
	return nil
}

// attaches returns how many attachments the region has had since it was
// created (information: it may lag by one while another process attaches).
// It panics if r was closed.
func (r *Region) attaches() uint64 {
	r.mustBeOpen("attaches")
	return atomic.LoadUint64(r.u64(offAttaches))
}

// created returns when the region was created, and by which PID. It panics
// if r was closed.
func (r *Region) created() (time.Time, int32) {
	r.mustBeOpen("created")
	ne := binary.NativeEndian
	return time.Unix(0, int64(ne.Uint64(r.m[offCreated:]))), int32(ne.Uint32(r.m[offCreator:]))
}

// mustBeOpen panics, with an error matching ErrClosed, if r was closed: the
// methods that read the mapping and return no error call it.
func (r *Region) mustBeOpen(op string) {
	if r.life.Closed() {
		panic(&Error{Op: op, Path: r.path, Kind: ErrClosed})
	}
}

// Close detaches from the region and unmaps it. Locks this process still
// holds in it are abandoned: other processes will find their holder dead and
// recover them. Close is idempotent.
//
// After Close, the locks and records made in the region report ErrClosed:
// the methods that return an error return one that matches it (and
// fs.ErrClosed), and those that cannot (Lock, Unlock, TryLock) panic with
// one. Goroutines asleep in Acquire, Lock or a SeqLock's Read, waiting for a
// holder, when Close begins are woken, and Close waits for them to return
// so. Any other use concurrent with Close (a lock method just starting, a
// slice of Bytes) is a race: it may touch the memory Close unmaps, and fault
// there (that memory goes to no other region for a while). So stop the
// region's users first (cancel their contexts) and wait for them; Close
// then ends the waits that remain.
func (r *Region) Close() error {
	if !r.life.Close() {
		return nil
	}
	r.closeWatches()
	return r.release()
}

func (r *Region) release() error {
	r.closeRobust()
	var err error
	if r.unmap != nil {
		err = r.unmap()
		r.m, r.data, r.unmap = nil, nil, nil
	}
	// Closing the descriptor drops our liveness lock: from now on probes
	// find this attachment gone.
	if cerr := r.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Remove deletes the region file at name (see Open).
func Remove(name string) error {
	path, err := resolve(name)
	if err != nil {
		return err
	}
	return os.Remove(path)
}

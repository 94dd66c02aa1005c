package shm

// Layout of a region file, version 5. All integers are in the byte order of
// the machine that created the region; a region is shared between processes
// of one machine, and a file of the other byte order is refused by the
// byteOrder field.
//
//	header (64 bytes)
//	  0  magic       [8]byte  "SHMLOCKR" once initialised; "SHMLOCKI" while
//	                          initialisation runs (a crash leaves it, and the
//	                          next opener initialises again)
//	  8  version     uint32   layout version, 5
//	 12  headerSize  uint32   offset of the data area: header and process
//	                          table, rounded up to a page
//	 16  dataSize    uint64   bytes of the data area
//	 24  slots       uint32   entries in the process table (1..MaxSlots)
//	 28  mode        uint32   locking protocol of the region's locks, for
//	                          its whole life: 1 probe, 2 robust (see Mode)
//	 32  created     int64    creation time, Unix nanoseconds
//	 40  creator     int32    creator's PID (in its own PID namespace)
//	 44  byteOrder   uint32   0x01020304 written natively
//	 48  attaches    uint64   count of attachments ever made (information)
//	 56  layout      uint64   fingerprint of the Layout the region was created
//	                          with (Options.Layout), 0 for none
//	process table: entry s (1..slots) at 128*s, 128 bytes each; entry 0 is
//	the header itself, so slot 0 never exists and a held owner word is never 0
//	  0  incarnation uint32   bumped each time the slot is claimed
//	  4  pid         int32    claimant's PID in its own PID namespace
//	  8  start       uint64   claimant's start time, clock ticks after boot
//	 16  pidns       uint64   inode of the claimant's PID namespace
//	 24  attached    int64    claim time, Unix nanoseconds
//	 32  timens      uint64   inode of the claimant's time namespace
//	 40  ntids       uint32   robust mode: how many of tids are recorded
//	 44  reserved
//	 48  tids   [16]uint32    robust mode: the thread IDs (in the claimant's
//	                          PID namespace) that lock words name while this
//	                          claimant holds them. No thread ID is recorded
//	                          twice in the table: see robust.go
//	112  reserved
//	data area: headerSize .. headerSize+dataSize; word 3 of a lock's line
//	  is its placement tag (place.go), so that tools find the locks
//	  (version 3; version 2 had no tags; version 4 added the mode and tids;
//	  version 5 the layout)
//
// File locks (all of them OFD locks, fcntl F_OFD_SETLK, so that no lock of
// one kind is ever invisible to a lock of another kind):
//
//	byte 0 of the file      held exclusively while a process creates,
//	                        validates or initialises the region, or
//	                        records a thread ID
//	byte 128*s (slot s)     held exclusively by the process attached in
//	                        slot s for as long as it is attached: its
//	                        liveness lock
const (
	magicReady = "SHMLOCKR"
	magicInit  = "SHMLOCKI"
	// Version is the layout version this package reads and writes. It
	// changes with any change of meaning of the file's bytes, the owner ID
	// and the lock words included: two builds that read one word in two
	// ways would each judge the other's holds dead.
	Version = 5

	byteOrderMark = 0x01020304

	headerBytes = 64
	entryBytes  = 128

	offMagic      = 0
	offVersion    = 8
	offHeaderSize = 12
	offDataSize   = 16
	offSlots      = 24
	offMode       = 28
	offCreated    = 32
	offCreator    = 40
	offByteOrder  = 44
	offAttaches   = 48
	offLayout     = 56

	entIncarnation = 0
	entPID         = 4
	entStart       = 8
	entPIDNS       = 16
	entAttached    = 24
	entTimeNS      = 32
	entNTIDs       = 40
	entTIDs        = 48

	// maxTIDs is how many thread IDs an entry records: robust lists, of
	// robust.Limit locks each, one attachment may register.
	maxTIDs = 16

	pageSize = 4096

	// LineSize is the alignment and size of a lock's home in the data area:
	// one cache line, so that no two locks, and no lock and unrelated data,
	// share one.
	LineSize = 64
)

// An owner ID names one attachment of one process to one region: the slot it
// claimed in the process table and that slot's incarnation at the claim. A
// process that attaches again, or a later process in the same slot, gets
// another ID, so an ID outlives neither its process nor its attachment.
//
//	bits  0..9   slot, 1..MaxSlots (never 0)
//	bits 10..29  incarnation of the slot, modulo 2^20
//
// IDs fit the 30 bits that a futex owner word gives to the owner. Slots are
// claimed round-robin, so an ID comes back after Slots × 2^20 claims (268
// million with the default 256 slots), or after 2^20 claims of one slot when
// all the others stay taken. Only then can a lock that a dead process left
// held, and that no waiter touched in all that time, be mistaken for the new
// claimant's and wait until that process exits.
const (
	slotBits        = 10
	incarnationBits = 20
	// idBits is the width of an owner ID.
	idBits   = slotBits + incarnationBits
	MaxSlots = 1<<slotBits - 1

	slotMask        = 1<<slotBits - 1
	incarnationMask = 1<<incarnationBits - 1

	// DefaultSlots is the size of the process table when Options.Slots is 0.
	DefaultSlots = 256
)

func makeID(slot, incarnation uint32) uint32 {
	return (incarnation&incarnationMask)<<slotBits | slot
}

// slotOf returns the process-table slot named by an owner ID.
func slotOf(id uint32) int { return int(id & slotMask) }

func incarnationOf(id uint32) uint32 { return id >> slotBits & incarnationMask }

func headerSizeFor(slots int) int {
	n := (1 + slots) * entryBytes
	return (n + pageSize - 1) / pageSize * pageSize
}

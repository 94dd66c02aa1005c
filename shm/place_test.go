//go:build linux

package shm

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/shmlock/shmlock/internal/line"
	"github.com/shmlock/shmlock/internal/region"
)

func sum(t *testing.T, path string) [32]byte {
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return sha256.Sum256(b)
}

// A read-only open attaches nothing, writes nothing (its mapping faults on a
// write), and refuses what is not a ready region, typed.
func TestOpenReadOnly(t *testing.T) {
	path := tempPath(t)
	w, err := Open(path, Options{Size: 4096, Slots: 4})
	require.NoError(t, err)
	require.NoError(t, w.place(0, region.KindMutex, 0))
	before := sum(t, path)

	r, err := OpenReadOnly(path)
	require.NoError(t, err)
	assert.True(t, r.isReadOnly())
	assert.Zero(t, r.ownerID(), "no slot claimed")
	assert.EqualValues(t, 1, r.attaches())
	require.Len(t, r.Attachments(), 1, "only the writer is attached")
	assert.Equal(t, Alive, r.Attachments()[0].State)
	assert.Equal(t, []region.Placement{{Off: 0, Kind: region.KindMutex}}, r.placements())
	assert.ErrorIs(t, r.place(64, region.KindMutex, 0), ErrInvalid)
	require.NoError(t, r.Close())
	assert.Equal(t, before, sum(t, path), "a read-only open changed the file")
	defer w.Close()

	got, err := runRole(t, os.Args[0], nil, "write-read-only", path)
	require.NoError(t, err, got)
	assert.Contains(t, got, "recovered: runtime error", "a write through the read-only mapping must fault")
	assert.Equal(t, before, sum(t, path))

	_, err = OpenReadOnly(path + ".missing")
	assert.ErrorIs(t, err, fs.ErrNotExist)
	empty := tempPath(t) + "-empty"
	require.NoError(t, os.WriteFile(empty, nil, 0o600))
	_, err = OpenReadOnly(empty)
	assert.ErrorIs(t, err, ErrNotRegion)
	half := tempPath(t) + "-half"
	require.NoError(t, os.WriteFile(half, []byte(magicInit+"rest of a header"), 0o600))
	_, err = OpenReadOnly(half)
	assert.ErrorIs(t, err, ErrNotRegion)
	assert.Contains(t, err.Error(), "not initialised")
	b, _ := os.ReadFile(half)
	assert.Equal(t, magicInit+"rest of a header", string(b), "left as it was, for the next Open to initialise")
}

// Placements finds exactly the locks placed, never the image of a tag copied
// elsewhere, and Place refuses two kinds of lock on one line, or data.
func TestPlacements(t *testing.T) {
	r, err := Open(tempPath(t), Options{Size: 4096})
	require.NoError(t, err)
	defer r.Close()
	require.NoError(t, r.place(0, region.KindMutex, 0))
	require.NoError(t, r.place(64, region.KindMutex, 0)) // a SeqLock's constructor places its Mutex first
	require.NoError(t, r.place(64, region.KindSeqLock, 64))
	require.NoError(t, r.place(64, region.KindMutex, 0), "its Mutex, placed again by another process")
	require.NoError(t, r.place(192, region.KindRecord, 120))
	want := []region.Placement{{Off: 0, Kind: region.KindMutex, Size: 0}, {Off: 64, Kind: region.KindSeqLock, Size: 64}, {Off: 192, Kind: region.KindRecord, Size: 120}}
	assert.Equal(t, want, r.placements())
	assert.Equal(t, 64+64, want[1].Bytes())
	assert.Equal(t, 64+2*128, want[2].Bytes())

	// The image of a tagged line stored in a SeqLock's data, and in a
	// free line: neither reads as a lock.
	line0, _ := r.lockLine(0)
	for _, off := range []int{128, 1024} {
		l, _ := r.lockLine(off)
		for w := range l {
			atomic.StoreUint64(&l[w], atomic.LoadUint64(&line0[w]))
		}
	}
	assert.Equal(t, want, r.placements())

	for _, c := range []struct {
		off  int
		k    region.Kind
		size int
	}{
		{64, region.KindRecord, 64},   // a SeqLock's line
		{64, region.KindSeqLock, 128}, // of another size
		{192, region.KindSeqLock, 120},
		{1024, region.KindMutex, 0},    // data in word 3
		{2048, region.KindSeqLock, 12}, // not whole words
		{4032, region.KindSeqLock, 64}, // does not fit
		{32, region.KindMutex, 0},      // not a line
		{256, region.KindMutex, 0},     // in the Record's data (192 + 64 + 2*128)
		{448, region.KindSeqLock, 64},  // likewise
	} {
		assert.ErrorIs(t, r.place(c.off, c.k, c.size), ErrInvalid, "%+v", c)
	}
	assert.Equal(t, want, r.placements())
	require.NoError(t, r.place(512, region.KindMutex, 0), "just past the Record")

	// A tag (well formed, right offset) whose lock would run past the data
	// area, as a hostile file could hold: no lock.
	l, _ := r.lockLine(2048)
	atomic.StoreUint64(&l[line.Tag], makeTag(2048, region.KindSeqLock, 8*4096))
	_, ok := r.placement(2048)
	assert.False(t, ok)
	assert.Equal(t, append(want, region.Placement{Off: 512, Kind: region.KindMutex, Size: 0}), r.placements())
}

// Listing the attached processes reads the table without bringing its holes
// into memory: the region file's blocks do not change.
func TestAttachmentsReadNoHoles(t *testing.T) {
	path := fmt.Sprintf("%s/shm-test-table-%d", Dir, os.Getpid())
	os.Remove(path)
	defer os.Remove(path)
	w, err := Open(path, Options{Size: 4096, Slots: MaxSlots})
	require.NoError(t, err)
	defer w.Close()
	blocks := func() int64 {
		var st unix.Stat_t
		require.NoError(t, unix.Stat(path, &st))
		return st.Blocks
	}
	before := blocks()
	r, err := OpenReadOnly(path)
	require.NoError(t, err)
	defer r.Close()
	require.Len(t, r.Attachments(), 1)
	assert.Equal(t, before, blocks(), "inspecting allocated pages of the table")
}

// Listing the locks of a large sparse region reads only the pages that hold
// data: the holes stay holes, and out of memory.
func TestPlacementsSkipHoles(t *testing.T) {
	path := fmt.Sprintf("%s/shm-test-sparse-%d", Dir, os.Getpid())
	os.Remove(path)
	defer os.Remove(path)
	const size = 16 << 20
	w, err := Open(path, Options{Size: size})
	require.NoError(t, err)
	defer w.Close()
	require.NoError(t, w.place(0, region.KindMutex, 0))
	require.NoError(t, w.place(size/2, region.KindRecord, 64))
	require.NoError(t, w.place(size-64, region.KindMutex, 0))

	r, err := OpenReadOnly(path)
	require.NoError(t, err)
	defer r.Close()
	assert.Equal(t, []region.Placement{{Off: 0, Kind: region.KindMutex, Size: 0}, {Off: size / 2, Kind: region.KindRecord, Size: 64}, {Off: size - 64, Kind: region.KindMutex, Size: 0}}, r.placements())
	vec := make([]byte, (len(r.data)+4095)/4096)
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&r.data[0])), uintptr(len(r.data)), uintptr(unsafe.Pointer(&vec[0])))
	require.Zero(t, errno)
	resident := 0
	for _, v := range vec {
		resident += int(v & 1)
	}
	t.Logf("%d of %d data pages resident in the inspecting process", resident, len(vec))
	assert.LessOrEqual(t, resident, 8, "the scan touched the holes")
}

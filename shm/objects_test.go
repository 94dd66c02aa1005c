//go:build linux

package shm

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmlock/shmlock/internal/region"
)

// layout declares a lock, a Record-sized lock of 64 data bytes, and two data
// objects, the first not a whole number of lines; grow adds to the second.
func layout(grow int) (*Layout, [4]int) {
	var l Layout
	return &l, [4]int{
		l.Lock("writers", LineSize),
		l.Lock("stats", LineSize+2*64),
		l.Data("table", 100),
		l.Data("tail", 8+grow),
	}
}

// Objects are laid out in order, each from a line of its own, and the data
// area holds them all.
func TestLayoutOffsets(t *testing.T) {
	l, offs := layout(0)
	assert.Equal(t, [4]int{0, 64, 256, 384}, offs)
	assert.Equal(t, 448, l.size)
	r, err := Open(tempPath(t), Options{Layout: l})
	require.NoError(t, err)
	defer r.Close()
	assert.Equal(t, 448, r.Size())
}

// The region records its layout: the same one, declared anew, opens it;
// another, or one on a region made without any, is ErrLayout; an opener that
// declares none takes it as it is.
func TestLayoutRecorded(t *testing.T) {
	path := tempPath(t)
	l, _ := layout(0)
	r, err := Open(path, Options{Layout: l})
	require.NoError(t, err)
	defer r.Close()

	same, _ := layout(0)
	r2, err := Open(path, Options{Layout: same})
	require.NoError(t, err)
	r2.Close()
	other, _ := layout(8) // one object 8 bytes larger, in the same lines
	_, err = Open(path, Options{Layout: other})
	assert.ErrorIs(t, err, ErrLayout)
	t.Log(err)
	bigger, _ := layout(4096) // a region made for it would be larger: the layout is the news
	_, err = Open(path, Options{Layout: bigger})
	assert.ErrorIs(t, err, ErrLayout)
	renamed := &Layout{}
	renamed.Lock("writers", LineSize)
	renamed.Lock("stats", LineSize+2*64)
	renamed.Data("table", 100)
	renamed.Data("tail2", 8)
	_, err = Open(path, Options{Layout: renamed})
	assert.ErrorIs(t, err, ErrLayout, "another name")
	r3, err := Open(path, Options{})
	require.NoError(t, err, "no layout declared: the region as it is")
	r3.Close()

	bare := tempPath(t) + "-bare"
	b, err := Open(bare, Options{Size: 4096})
	require.NoError(t, err)
	defer b.Close()
	_, err = Open(bare, Options{Layout: same})
	assert.ErrorIs(t, err, ErrLayout, "a region created without a layout")
	t.Log(err)
}

// A region opened without a layout (read-only, say) checks one on demand,
// as Open would have.
func TestCheckLayout(t *testing.T) {
	path := tempPath(t)
	l, _ := layout(0)
	r, err := Open(path, Options{Layout: l})
	require.NoError(t, err)
	defer r.Close()
	ro, err := OpenReadOnly(path)
	require.NoError(t, err)
	same, _ := layout(0)
	assert.NoError(t, ro.CheckLayout(same))
	other, _ := layout(8)
	err = ro.CheckLayout(other)
	assert.ErrorIs(t, err, ErrLayout)
	var e *Error
	assert.ErrorAs(t, err, &e)
	assert.ErrorIs(t, ro.CheckLayout(nil), ErrInvalid)
	bad := &Layout{}
	bad.Data("", 8)
	assert.ErrorIs(t, ro.CheckLayout(bad), ErrInvalid)
	require.NoError(t, ro.Close())
	assert.ErrorIs(t, ro.CheckLayout(same), ErrClosed)
}

// Under a layout, Bytes hands out data objects only, and a lock goes only
// where the layout declares one, of at most its size.
func TestLayoutGuardsLocks(t *testing.T) {
	l, offs := layout(0)
	r, err := Open(tempPath(t), Options{Layout: l})
	require.NoError(t, err)
	defer r.Close()
	b, err := r.Bytes(offs[2], 100)
	require.NoError(t, err)
	assert.Len(t, b, 100)
	_, err = r.Bytes(offs[3], 8)
	require.NoError(t, err)
	for _, c := range [][2]int{{offs[0], 8}, {offs[1] + 64, 8}, {offs[2], 200}, {offs[2] + 96, 8}, {440, 8}} {
		_, err := r.Bytes(c[0], c[1])
		assert.ErrorIs(t, err, ErrLayout, "Bytes(%d, %d)", c[0], c[1])
	}
	require.NoError(t, r.place(offs[0], region.KindMutex, 0))
	require.NoError(t, r.place(offs[1], region.KindRecord, 64))
	assert.ErrorIs(t, r.place(offs[2], region.KindMutex, 0), ErrLayout, "a lock on data")
	assert.ErrorIs(t, r.place(offs[1]+64, region.KindMutex, 0), ErrLayout, "a lock inside another's lines")
	assert.ErrorIs(t, r.place(offs[0], region.KindSeqLock, 64), ErrLayout, "a lock larger than its object")
}

// An array of locks (Locks) takes a lock at each of its strides, and none
// between them.
func TestLayoutLockArray(t *testing.T) {
	var l Layout
	arr := l.Locks("many", 3, LineSize+64)
	d := l.Data("after", 8)
	assert.Equal(t, 3*128, d)
	r, err := Open(tempPath(t), Options{Layout: &l})
	require.NoError(t, err)
	defer r.Close()
	for i := range 3 {
		require.NoError(t, r.place(arr+128*i, region.KindSeqLock, 64), "lock %d", i)
	}
	assert.ErrorIs(t, r.place(arr+64, region.KindMutex, 0), ErrLayout, "between two locks")
	assert.ErrorIs(t, r.place(d, region.KindMutex, 0), ErrLayout, "past the array")
	assert.ErrorIs(t, r.place(arr, region.KindRecord, 64), ErrLayout, "larger than a lock of the array")
}

// A layout that names an object twice, or one of no bytes, is refused at
// Open, which creates nothing.
func TestLayoutRefusesBadDeclarations(t *testing.T) {
	for name, f := range map[string]func(l *Layout){
		"twice":    func(l *Layout) { l.Lock("a", LineSize); l.Data("a", 8) },
		"empty":    func(l *Layout) { l.Data("a", 0) },
		"no locks": func(l *Layout) { l.Locks("a", 0, LineSize) },
		"too large": func(l *Layout) {
			l.Data("a", math.MaxInt-63)
			l.Data("b", math.MaxInt-63)
		},
		"too many locks": func(l *Layout) { l.Locks("a", math.MaxInt/64+1, LineSize) },
		"no name":        func(l *Layout) { l.Lock("", LineSize) },
	} {
		var l Layout
		f(&l)
		path := tempPath(t) + "-" + name
		_, err := Open(path, Options{Layout: &l})
		assert.ErrorIs(t, err, ErrInvalid, name)
	}
}

package seqlock_test

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/shmlock/shmlock/seqlock"
	"github.com/shmlock/shmlock/shm"
)

// benchRegion is a region with a SeqLock and a Record of n bytes each, and n
// bytes of plain data: the bytes a copy reads at memory speed.
func benchRegion(b *testing.B, n int) (*seqlock.SeqLock, *seqlock.Record, []byte) {
	name := fmt.Sprintf("seqlock-bench-%d-%d", os.Getpid(), n)
	recOff := seqlock.SeqLockSize(n)
	dataOff := recOff + seqlock.RecordSize(n)
	r, err := shm.Open(name, shm.Options{Size: dataOff + n})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close(); shm.Remove(name) })
	s, err := seqlock.NewSeqLock(r, 0, n)
	if err != nil {
		b.Fatal(err)
	}
	rec, err := seqlock.NewRecord(r, recOff, n)
	if err != nil {
		b.Fatal(err)
	}
	data, err := r.Bytes(dataOff, n)
	if err != nil {
		b.Fatal(err)
	}
	return s, rec, data
}

// BenchmarkWrite is one whole write of 8 bytes, as a caller writes it.
func BenchmarkWrite(b *testing.B) {
	s, rec, _ := benchRegion(b, 8)
	v := make([]byte, 8)
	for _, k := range []struct {
		name  string
		write func(context.Context) (seqlock.Writer, error)
	}{{"SeqLock", s.Write}, {"Record", rec.Write}} {
		b.Run(k.name, func(b *testing.B) {
			b.ReportAllocs()
			ctx := context.Background()
			for b.Loop() {
				write(ctx, k.write, v)
			}
		})
	}
}

// write is one whole write of v through f (SeqLock.Write or Record.Write), as
// a caller writes it: BenchmarkWrite's and TestWriteDoesNotAllocate's.
func write(ctx context.Context, f func(context.Context) (seqlock.Writer, error), v []byte) {
	w, err := f(ctx)
	if err != nil {
		panic(err)
	}
	defer w.Release()
	if err := w.Store(v); err != nil {
		panic(err)
	}
	w.Commit()
}

// BenchmarkRead reads a record of each size from a SeqLock and a Record,
// beside a copy of as many mapped bytes: the bandwidth the readers reach of
// memory's.
func BenchmarkRead(b *testing.B) {
	for _, n := range []int{8, 64, 1024, 4096} {
		s, rec, data := benchRegion(b, n)
		dst := make([]byte, n)
		b.Run(fmt.Sprintf("SeqLock/%d", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				if err := s.Read(dst); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("Record/%d", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				if err := rec.Read(dst); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("copy/%d", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				copy(dst, data)
			}
		})
	}
}

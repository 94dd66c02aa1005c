//go:build linux

package shm

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzOpen writes arbitrary bytes as a region file and opens it: Open must
// return a region that works or one of the typed errors, never panic, hang or
// change the file it refuses.
func FuzzOpen(f *testing.F) {
	valid := header(2, 64)
	f.Add(valid, 0)
	f.Add(valid[:63], 0)
	f.Add(valid, 65)
	f.Add([]byte("SHMLOCKI"), 64)
	f.Add([]byte("SHMLOCKR"), 0)
	f.Add([]byte{}, 8)
	for _, off := range []int{offVersion, offHeaderSize, offDataSize, offSlots, offMode, offByteOrder} {
		b := append([]byte(nil), valid...)
		binary.NativeEndian.PutUint32(b[off:], 0xFFFFFFFF)
		f.Add(b, 0)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, content []byte, size int) {
		if len(content) > 1<<20 || size < 0 || size > 1<<20 {
			t.Skip()
		}
		path := filepath.Join(dir, "region")
		os.Remove(path)
		if err := os.WriteFile(path, content, 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := Open(path, Options{Size: size, InitTimeout: 1})
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Kind == nil {
				t.Fatalf("untyped error: %v", err)
			}
			if after, _ := os.ReadFile(path); string(after) != string(content) {
				t.Fatalf("a refused file was changed: %v", err)
			}
			return
		}
		defer r.Close()
		if r.Size() < size {
			t.Fatalf("region of %d bytes, %d asked", r.Size(), size)
		}
		if b, err := r.Bytes(0, r.Size()); err != nil || len(b) != r.Size() {
			t.Fatalf("data area unusable: %v", err)
		}
	})
}

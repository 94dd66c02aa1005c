package shm_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/shmlock/shmlock/shm"
)

func ExampleOpen() {
	name := fmt.Sprintf("shm-example-%d", os.Getpid())
	r, err := shm.Open(name, shm.Options{Size: 4096})
	if err != nil {
		panic(err)
	}
	defer shm.Remove(r.Path())
	defer r.Close()
	fmt.Println(r.Path() == filepath.Join(shm.Dir, name), r.Size())
	// Output: true 4096
}

// A Layout declares what a region holds: every process that declares the
// same one finds each object at the same offset, a region made with another
// is refused, and Bytes hands out data only, never a lock's line.
func ExampleLayout() {
	name := fmt.Sprintf("shm-example-layout-%d", os.Getpid())
	defer shm.Remove(name)
	declare := func(valueBytes int) *shm.Layout {
		var l shm.Layout
		l.Lock("writers", 64) // shmlock.Size: the lock's line
		l.Data("value", valueBytes)
		return &l
	}
	r, err := shm.Open(name, shm.Options{Layout: declare(100)})
	if err != nil {
		panic(err)
	}
	defer r.Close()
	_, err = r.Bytes(0, 8)
	fmt.Println("over the lock:", errors.Is(err, shm.ErrLayout))
	b, err := r.Bytes(64, 100)
	fmt.Println("the value:", len(b), err)
	_, err = shm.Open(name, shm.Options{Layout: declare(200)})
	fmt.Println("another layout:", errors.Is(err, shm.ErrLayout))
	// Output:
	// over the lock: true
	// the value: 100 <nil>
	// another layout: true
}

// A file that is not a region is refused with a typed error that names it.
func ExampleError() {
	path := filepath.Join(os.TempDir(), fmt.Sprintf("not-a-region-%d", os.Getpid()))
	os.WriteFile(path, []byte("some other program's data, long enough to have a header....."), 0o600)
	defer os.Remove(path)
	_, err := shm.Open(path, shm.Options{Size: 64})
	fmt.Println(errors.Is(err, shm.ErrNotRegion))
	// Output: true
}

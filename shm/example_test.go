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

// A file that is not a region is refused with a typed error that names it.
func ExampleError() {
	path := filepath.Join(os.TempDir(), fmt.Sprintf("not-a-region-%d", os.Getpid()))
	os.WriteFile(path, []byte("some other program's data, long enough to have a header....."), 0o600)
	defer os.Remove(path)
	_, err := shm.Open(path, shm.Options{Size: 64})
	fmt.Println(errors.Is(err, shm.ErrNotRegion))
	// Output: true
}

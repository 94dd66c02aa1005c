//go:build linux

package shm_test

import (
	"errors"
	"fmt"
	"os"

	"github.com/shmlock/shmlock/shm"
)

// A region keeps the mode it was created in. Processes that open it with
// ModeAuto follow that mode; asking for the other one is refused, typed, so
// that no two protocols ever read one lock word.
func ExampleMode() {
	name := fmt.Sprintf("shm-example-mode-%d", os.Getpid())
	r, err := shm.Open(name, shm.Options{Size: 4096, Mode: shm.ModeRobust})
	if err != nil {
		panic(err) // shm.ErrMode where the kernel has no robust futex lists
	}
	defer shm.Remove(r.Path())
	defer r.Close()

	other, err := shm.Open(name, shm.Options{})
	if err != nil {
		panic(err)
	}
	defer other.Close()
	fmt.Println(other.Mode())

	_, err = shm.Open(name, shm.Options{Mode: shm.ModeProbe})
	fmt.Println(errors.Is(err, shm.ErrMode))
	// Output:
	// robust
	// true
}

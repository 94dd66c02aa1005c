//go:build linux

package cache_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/shmlock/shmlock/examples/cache"
	"github.com/shmlock/shmlock/shm"
)

// Any number of processes open the same cache by name; here, one.
func Example() {
	name := fmt.Sprintf("cache-example-%d", os.Getpid()) // /dev/shm/cache-example-<pid>
	c, err := cache.Open(name, cache.Options{Capacity: 1024, MaxKey: 32, MaxValue: 256})
	if err != nil {
		log.Fatal(err)
	}
	defer shm.Remove(name)
	defer c.Close()

	ctx := context.Background()
	if err := c.Set(ctx, []byte("user:42"), []byte(`{"name":"Ada"}`), time.Minute); err != nil {
		log.Fatal(err) // only a ctx that ends while another process writes, or a key or value too long
	}
	v, ok := c.Get([]byte("user:42"), nil) // no lock, never torn
	fmt.Println(string(v), ok)
	_, ok = c.Get([]byte("user:43"), nil)
	fmt.Println(ok)
	// Output:
	// {"name":"Ada"} true
	// false
}

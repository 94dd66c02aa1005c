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

// A tool reads a cache that other processes use, without its Options and
// without attaching to it: what the cachestat command prints.
func ExampleInspect() {
	name := fmt.Sprintf("cache-inspect-example-%d", os.Getpid())
	c, err := cache.Open(name, cache.Options{Capacity: 1024, MaxKey: 32, MaxValue: 256})
	if err != nil {
		log.Fatal(err)
	}
	defer shm.Remove(name)
	defer c.Close()
	c.Set(context.Background(), []byte("user:42"), []byte(`{"name":"Ada"}`), 0)
	c.Get([]byte("user:42"), nil)
	c.Get([]byte("user:43"), nil)

	rep, err := cache.Inspect(name) // in any process
	if err != nil {
		log.Fatal(err)
	}
	s := rep.Stats
	fmt.Printf("%d of %d entries, %d hit, %d missed, %d shards\n", s.Entries, s.Capacity, s.Hits, s.Misses, len(rep.Writers))
	// Output:
	// 1 of 1024 entries, 1 hit, 1 missed, 64 shards
}

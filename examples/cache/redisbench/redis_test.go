//go:build linux

// Package redisbench measures examples/cache beside what a Go user would run
// instead: a local Redis on a unix socket, through go-redis. It is a module
// of its own, so that the library's go.mod keeps its three dependencies.
package redisbench

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/shmlock/shmlock/examples/cache"
)

const keys = 10000

func key(k int) string { return fmt.Sprintf("key-%012d", k) }

func value(k int) []byte {
	v := make([]byte, 64)
	binary.LittleEndian.PutUint64(v, uint64(k))
	return v
}

// startRedis starts redis-server on a unix socket in a temporary directory,
// without persistence, and stops it when b ends; it skips b where
// redis-server is missing.
func startRedis(b *testing.B) *redis.Client {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		b.Skip("redis-server is not installed (Debian: apt-get install redis-server); the Redis benchmarks are skipped")
	}
	dir := b.TempDir()
	sock := filepath.Join(dir, "redis.sock")
	cmd := exec.Command(bin, "--port", "0", "--unixsocket", sock, "--save", "", "--appendonly", "no", "--dir", dir)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	c := redis.NewClient(&redis.Options{Network: "unix", Addr: sock})
	b.Cleanup(func() { c.Close() })
	for deadline := time.Now().Add(10 * time.Second); c.Ping(context.Background()).Err() != nil; {
		if time.Now().After(deadline) {
			b.Fatal("redis-server did not answer within 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return c
}

// store is what both sides do: Get of a key that is there, and Set.
type store interface {
	get(k string) bool
	set(k string, v []byte) error
}

type shm struct {
	c   *cache.Cache
	buf []byte
}

func (s *shm) get(k string) bool {
	var ok bool
	s.buf, ok = s.c.Get([]byte(k), s.buf[:0])
	return ok
}
func (s *shm) set(k string, v []byte) error { return s.c.Set(context.Background(), []byte(k), v, 0) }

type rds struct{ c *redis.Client }

func (s rds) get(k string) bool { return s.c.Get(context.Background(), k).Err() == nil }
func (s rds) set(k string, v []byte) error {
	return s.c.Set(context.Background(), k, v, 0).Err()
}

// BenchmarkGetSet: one goroutine's Get (a hit) and Set of random keys of
// 10,000, with 64-byte values, through examples/cache and through Redis,
// side by side in one run; and the same from 8 goroutines at once
// (parallel), for throughput.
func BenchmarkGetSet(b *testing.B) {
	rc := startRedis(b)
	c, err := cache.Open(filepath.Join(b.TempDir(), "cache"), cache.Options{Capacity: 32768, MaxKey: 16, MaxValue: 64})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	stores := []struct {
		name string
		s    func() store
	}{
		{"shmlock", func() store { return &shm{c: c, buf: make([]byte, 0, 64)} }},
		{"redis", func() store { return rds{rc} }},
	}
	var present []string
	for k := range keys {
		for _, st := range stores {
			if err := st.s().set(key(k), value(k)); err != nil {
				b.Fatal(err)
			}
		}
	}
	for k := range keys {
		if (&shm{c: c}).get(key(k)) {
			present = append(present, key(k))
		}
	}
	v := value(1)
	for _, op := range []string{"get", "set"} {
		for _, st := range stores {
			b.Run(op+"/"+st.name, func(b *testing.B) {
				s := st.s()
				r := rand.New(rand.NewPCG(1, 2))
				for b.Loop() {
					run(b, s, op, present[r.IntN(len(present))], v)
				}
			})
			b.Run(op+"/parallel/"+st.name, func(b *testing.B) {
				b.SetParallelism(4) // 8 goroutines on 2 cores
				b.RunParallel(func(pb *testing.PB) {
					s := st.s()
					r := rand.New(rand.NewPCG(rand.Uint64(), 2))
					for pb.Next() {
						run(b, s, op, present[r.IntN(len(present))], v)
					}
				})
			})
		}
	}
}

func run(b *testing.B, s store, op, k string, v []byte) {
	if op == "get" {
		if !s.get(k) {
			b.Fatal("miss")
		}
	} else if err := s.set(k, v); err != nil {
		b.Fatal(err)
	}
}

func TestMain(m *testing.M) { os.Exit(m.Run()) }

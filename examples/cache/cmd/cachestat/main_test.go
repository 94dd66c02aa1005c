//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmlock/shmlock/examples/cache"
	"github.com/shmlock/shmlock/internal/owner"
	"github.com/shmlock/shmlock/internal/proctest"
	"github.com/shmlock/shmlock/shm"
)

func TestMain(m *testing.M) {
	proctest.Dispatch(map[string]func([]string) int{"writer": writer})
	os.Exit(m.Run())
}

func opts(mode string) cache.Options {
	o := cache.Options{Capacity: 256, MaxKey: 16, MaxValue: 32, Shards: 4}
	if mode == "probe" {
		o.Region.Mode = shm.ModeProbe
	}
	return o
}

// writer Sets keys of its own until it is killed.
func writer(args []string) int {
	c, err := cache.Open(args[0], opts(args[1]))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	for i := 0; ; i++ {
		if err := c.Set(context.Background(), fmt.Appendf(nil, "w-%d", i%100), []byte("v"), 0); err != nil {
			fmt.Println(err)
			return 1
		}
	}
}

// cachestat shows what this process and a writer that died holding a
// shard's lock did to a cache, and, once a Set took the shard over, that.
func TestCachestat(t *testing.T) {
	for _, mode := range []string{"robust", "probe"} {
		t.Run(mode, func(t *testing.T) { testCachestat(t, mode) })
	}
}

func testCachestat(t *testing.T, mode string) {
	path := filepath.Join(t.TempDir(), "cache")
	c, err := cache.Open(path, opts(mode))
	require.NoError(t, err)
	defer c.Close()
	ctx := context.Background()
	for i := range 10 {
		require.NoError(t, c.Set(ctx, fmt.Appendf(nil, "k-%d", i), []byte("v"), 0))
	}
	for i := range 12 {
		c.Get(fmt.Appendf(nil, "k-%d", i), nil) // 10 hits, 2 misses
	}

	h := proctest.New(t, 60*time.Second)
	shard := killHolding(t, h, path, mode, c)

	var out bytes.Buffer
	require.NoError(t, run([]string{"-json", path}, &out))
	var rep report
	require.NoError(t, json.Unmarshal(out.Bytes(), &rep), out.String())
	assert.Equal(t, 256, rep.Capacity)
	assert.Equal(t, 16, rep.MaxKey)
	assert.Equal(t, 32, rep.MaxValue)
	assert.Equal(t, uint64(10), rep.Stats.Hits)
	assert.Equal(t, uint64(2), rep.Stats.Misses)
	assert.GreaterOrEqual(t, rep.Stats.Sets, uint64(10))
	require.Len(t, rep.Shards, 4)
	// The kernel frees a dead thread's robust lock, and marks it; a
	// probed one stays held by the dead.
	if sh := rep.Shards[shard]; mode == "probe" {
		assert.True(t, sh.Held && sh.State == "dead", "%+v", sh)
	} else {
		assert.True(t, !sh.Held && sh.OwnerDied, "%+v", sh)
	}

	out.Reset()
	require.NoError(t, run([]string{path}, &out))
	assert.Regexp(t, fmt.Sprintf(`(?m)^%d +(pid \d+ \(slot \d+\) +dead|- +free: its holder died)`, shard), out.String())
	assert.Regexp(t, `(?m)^gets +12 +\(10 hits, 2 misses`, out.String())

	// Sets of enough keys meet the dead writer's shard, and take it over.
	for i := 0; c.Stats().Takeovers == 0; i++ {
		require.Less(t, i, 10000, "no Set took the dead writer's shard over")
		require.NoError(t, c.Set(ctx, fmt.Appendf(nil, "t-%d", i), []byte("v"), 0))
	}
	out.Reset()
	require.NoError(t, run([]string{path}, &out))
	assert.Regexp(t, `(?m)^takeovers +1 `, out.String())
	assert.Regexp(t, fmt.Sprintf(`(?m)^%d +- +free +- +1$`, shard), out.String())
	t.Log("\n" + out.String())
}

// killHolding runs a writer, stops it until it is caught holding a shard's
// lock, and kills it there; it returns the shard.
func killHolding(t *testing.T, h *proctest.Harness, path, mode string, c *cache.Cache) int {
	w := h.Spawn("writer", path, mode)
	for try := 0; try < 1000; try++ {
		time.Sleep(time.Millisecond)
		syscall.Kill(w.Pid(), syscall.SIGSTOP)
		proctest.Eventually(t, 5*time.Second, "the writer did not stop", func() bool {
			b, err := os.ReadFile("/proc/" + strconv.Itoa(w.Pid()) + "/stat")
			st, perr := owner.ParseStat(b)
			return err == nil && perr == nil && st.State == 'T'
		})
		for i, s := range c.Writers() {
			if s.Held && int(s.Holder.PID) == w.Pid() {
				w.Kill()
				<-w.Done()
				return i
			}
		}
		syscall.Kill(w.Pid(), syscall.SIGCONT)
	}
	t.Fatalf("the writer was never caught holding a shard's lock; it said: %s", strings.TrimSpace(w.Output()))
	return -1
}

// Bad names and regions that hold no cache are errors, not crashes.
func TestNoCache(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	assert.Error(t, run([]string{filepath.Join(dir, "absent")}, &out))
	assert.Error(t, run([]string{}, &out))
	assert.Error(t, run([]string{"a", "b"}, &out))
	plain := filepath.Join(dir, "plain")
	require.NoError(t, os.WriteFile(plain, []byte("not a region"), 0o600))
	assert.Error(t, run([]string{plain}, &out))
	assert.Empty(t, out.String())
}

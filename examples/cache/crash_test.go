//go:build linux && shmlock_fault

package cache_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmlock/shmlock/internal/fault"
	"github.com/shmlock/shmlock/internal/proctest"
	"github.com/shmlock/shmlock/shm"
)

// TestCrashPoints: at each of the cache's crash points, in both modes, a
// writer SIGKILLs itself there, on its 100th pass, beside the kill test's
// writers and readers; every read stays whole and fresh, no lossless key is
// lost, and the writers go on. The hand moves only in a full bucket, so
// that point's row runs in a cache too small for the lossless check.
func TestCrashPoints(t *testing.T) {
	rows := map[fault.Point]int{ // capacity
		fault.CacheHandMoved:    64,
		fault.CacheEntryOdd:     opts.Capacity,
		fault.CacheEntryWritten: opts.Capacity,
		fault.CachePublished:    opts.Capacity,
	}
	for _, mode := range []shm.Mode{shm.ModeRobust, shm.ModeProbe} {
		for _, p := range fault.All() {
			if !strings.HasPrefix(p.String(), "cache-") {
				continue
			}
			capacity, ok := rows[p]
			if !ok {
				t.Errorf("crash point %v has no row in this table", p)
				continue
			}
			t.Run(mode.String()+"/"+p.String(), func(t *testing.T) {
				w := newWorld(t, mode, capacity, true)
				cmd := proctest.Command("writer", append(w.args, "0")...)
				cmd.Env = append(cmd.Env, "SHMLOCK_FAULT="+p.String()+":"+strconv.Itoa(100))
				victim := w.h.Start(cmd)
				out := victim.Wait(t, 20*time.Second)
				require.Contains(t, out, "fault: dying at "+p.String(), "the victim never reached the point")
				w.ws[0] = w.spawnWriter(0) // the victim's keys' writer from now on
				w.finish(t)
				assert.GreaterOrEqual(t, w.c.Stats().Takeovers, uint64(1), "the victim died holding; nobody took its shard over")
			})
		}
	}
}

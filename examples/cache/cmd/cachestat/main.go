// Command cachestat shows a shared cache (examples/cache) as every process
// that uses it sees it: its dimensions, the counters of all its processes
// summed, its live entries, and its shards' writers' locks — who holds one,
// alive or dead, and how often each was taken over from a writer that died.
// It opens the region read-only and changes nothing.
//
//	cachestat [-json] [-all] NAME
//
// NAME is the cache's region, as cache.Open was given it: a name in
// /dev/shm or a path. By default only the shards that are held, or were
// ever taken over, are listed; -all lists every one.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/shmlock/shmlock/examples/cache"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "cachestat:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("cachestat", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the report as JSON")
	all := fs.Bool("all", false, "list every shard, not only those held or taken over")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: cachestat [-json] [-all] NAME")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return fmt.Errorf("want one cache name, have %d", fs.NArg())
	}
	rep, err := cache.Inspect(fs.Arg(0))
	if err != nil {
		return err
	}
	if *asJSON {
		e := json.NewEncoder(out)
		e.SetIndent("", "  ")
		return e.Encode(jsonOf(rep))
	}
	return show(out, rep, *all)
}

// report is -json's form of a cache.Report.
type report struct {
	Path     string      `json:"path"`
	Capacity int         `json:"capacity"`
	MaxKey   int         `json:"max_key"`
	MaxValue int         `json:"max_value"`
	Stats    cache.Stats `json:"stats"`
	Shards   []shard     `json:"shards"`
}

type shard struct {
	Held       bool   `json:"held"`
	Owner      string `json:"owner"` // the owner word, what shmlock break takes
	PID        int32  `json:"pid,omitempty"`
	Slot       int    `json:"slot,omitempty"`
	State      string `json:"state,omitempty"` // alive, dead, unverifiable
	Reason     string `json:"reason,omitempty"`
	HeldForMS  int64  `json:"held_for_ms,omitempty"`
	OwnerDied  bool   `json:"owner_died"` // a holder died, and no writer has taken the shard over yet
	Generation uint32 `json:"generation"`
	Recoveries uint64 `json:"taken_over"`
}

func jsonOf(rep *cache.Report) report {
	j := report{Path: rep.Path, Capacity: rep.Stats.Capacity, MaxKey: rep.Options.MaxKey, MaxValue: rep.Options.MaxValue,
		Stats: rep.Stats, Shards: []shard{}}
	for _, w := range rep.Writers {
		s := shard{Held: w.Held, Owner: fmt.Sprintf("%#x", w.Owner), OwnerDied: w.OwnerDied,
			Generation: w.Generation, Recoveries: w.Recoveries}
		if w.Held {
			s.PID, s.Slot, s.State, s.Reason = w.Holder.PID, w.Holder.Slot, w.Holder.State.String(), w.Holder.Reason
			s.HeldForMS = w.HeldFor.Milliseconds()
		}
		j.Shards = append(j.Shards, s)
	}
	return j
}

func show(out io.Writer, rep *cache.Report, all bool) error {
	o, s := rep.Options, rep.Stats
	tw := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "%s: %d entries in buckets of %d ways, keys of at most %d bytes, values of at most %d\n",
		rep.Path, s.Capacity, cache.Ways, o.MaxKey, o.MaxValue)
	fmt.Fprintf(tw, "entries\t%d live\t(%.1f%% full)\n", s.Entries, 100*float64(s.Entries)/float64(max(s.Capacity, 1)))
	gets := s.Hits + s.Misses
	fmt.Fprintf(tw, "gets\t%d\t(%d hits, %d misses: %.1f%% hits)\n", gets, s.Hits, s.Misses, 100*float64(s.Hits)/float64(max(gets, 1)))
	for _, c := range []struct {
		name string
		n    uint64
		what string
	}{
		{"sets", s.Sets, ""},
		{"deletes", s.Deletes, "of keys that were there"},
		{"evictions", s.Evictions, "live entries a Set displaced"},
		{"expirations", s.Expirations, "expired entries a Set replaced"},
		{"takeovers", s.Takeovers, "writers that took a shard over from a writer that died"},
		{"repairs", s.Repairs, "buckets found written from outside the cache, and emptied"},
	} {
		fmt.Fprintf(tw, "%s\t%d\t%s\n", c.name, c.n, c.what)
	}
	held, died := 0, 0
	for _, w := range rep.Writers {
		switch {
		case w.Held:
			held++
		case w.OwnerDied:
			died++
		}
	}
	fmt.Fprintf(tw, "shards\t%d\t(%d held now, %d left by a writer that died)\n", len(rep.Writers), held, died)
	if err := tw.Flush(); err != nil {
		return err
	}
	tw = tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "\nshard\tholder\tstate\theld for\ttaken over")
	for i, w := range rep.Writers {
		if !all && !w.Held && !w.OwnerDied && w.Recoveries == 0 {
			continue
		}
		holder, state, heldFor := "-", "free", "-"
		switch {
		case w.OwnerDied && !w.Held:
			// Robust mode: the kernel freed the lock of a thread that
			// died, and marked it.
			state = "free: its holder died; the next writer takes it over"
		case w.Held:
			holder = fmt.Sprintf("pid %d (slot %d)", w.Holder.PID, w.Holder.Slot)
			state = w.Holder.State.String()
			if w.Holder.Reason != "" {
				state += ": " + w.Holder.Reason
			}
			if w.HeldFor > 0 {
				heldFor = "≥ " + w.HeldFor.Round(time.Millisecond).String()
			}
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\n", i, holder, state, heldFor, w.Recoveries)
	}
	return tw.Flush()
}

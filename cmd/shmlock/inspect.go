package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/shmlock/shmlock"
	"github.com/shmlock/shmlock/internal/line"
	"github.com/shmlock/shmlock/internal/region"
	"github.com/shmlock/shmlock/seqlock"
	"github.com/shmlock/shmlock/shm"
)

// report is what inspect prints, and its -json form.
type report struct {
	Region   regionInfo   `json:"region"`
	Attached []holderInfo `json:"attached"`
	Locks    []lockInfo   `json:"locks"`
}

type regionInfo struct {
	Path       string    `json:"path"`
	Version    int       `json:"layout_version"`
	Mode       string    `json:"mode"` // probe or robust (shm.Mode)
	DataSize   int       `json:"data_bytes"`
	Slots      int       `json:"slots"`
	Created    time.Time `json:"created"`
	CreatorPID int32     `json:"creator_pid"`
	Attaches   uint64    `json:"attachments_so_far"`
}

type holderInfo struct {
	Slot      int       `json:"slot"`
	PID       int32     `json:"pid"`
	TID       int32     `json:"tid,omitempty"` // robust mode: the thread the lock word names
	State     string    `json:"state"`         // alive, dead, unverifiable
	Reason    string    `json:"reason"`        // why: zombie, PID reused, another PID namespace, ...
	ProcState string    `json:"proc_state,omitempty"`
	Attached  time.Time `json:"attached"`
}

type lockInfo struct {
	region.Placement
	Kind       string      `json:"kind"`
	Held       bool        `json:"held"`
	Owner      string      `json:"owner"` // the owner word, what break takes
	Holder     *holderInfo `json:"holder,omitempty"`
	HeldForMS  int64       `json:"held_for_ms"` // at least; 0 if no waiter saw the hold
	Generation uint32      `json:"generation"`  // the fencing token of the current or last hold
	Recoveries uint64      `json:"recoveries"`
	Waiters    bool        `json:"waiters"`    // a waiter may be asleep on it
	OwnerDied  bool        `json:"owner_died"` // a death not yet told to an Acquire
	// SeqLock
	Seq   *uint64 `json:"seq,omitempty"`
	Dirty *bool   `json:"dirty,omitempty"`
	// Record
	Published *int       `json:"published,omitempty"`
	CopySeqs  *[2]uint64 `json:"copy_seqs,omitempty"`
	// RWMutex: the attachments that hold read shares
	Readers      []readerInfo `json:"readers,omitempty"`
	ReadersFreed *uint64      `json:"readers_freed,omitempty"`
}

type readerInfo struct {
	Word   string     `json:"word"` // the reader word, what break --reader takes
	Shares uint32     `json:"shares"`
	Holder holderInfo `json:"holder"`
}

func holder(h shm.Holder) *holderInfo {
	hi := &holderInfo{Slot: h.Slot, PID: h.PID, TID: h.TID, State: h.State.String(), Reason: h.Reason, Attached: h.Attached}
	if h.ProcState != 0 {
		hi.ProcState = string(h.ProcState)
	}
	return hi
}

// inspectRegion reads everything inspect shows. It opens the region
// read-only: inspecting never changes it.
func inspectRegion(path string) (*report, error) {
	r, err := shm.OpenReadOnly(path)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if err := region.Of(r).Check(); err != nil {
		return nil, err
	}
	return describe(r)
}

// describe reads everything inspect shows of r. If the file is truncated
// under it (by a broken or hostile writer), touching the lost pages faults:
// that becomes an error, not a crash.
func describe(r *shm.Region) (rep *report, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if e := recover(); e != nil {
			if _, ok := e.(runtime.Error); !ok {
				panic(e)
			}
			rep, err = nil, fmt.Errorf("reading %s failed (%v): was the region file truncated while it was read? (%v)",
				r.Path(), e, region.Of(r).Check())
		}
	}()
	created, creator := region.Of(r).Created()
	rep = &report{Region: regionInfo{
		Path: r.Path(), Version: shm.Version, Mode: r.Mode().String(), DataSize: r.Size(), Slots: region.Of(r).Slots(),
		Created: created, CreatorPID: creator, Attaches: region.Of(r).Attaches(),
	}}
	for _, h := range r.Attachments() {
		rep.Attached = append(rep.Attached, *holder(h))
	}
	for _, p := range region.Of(r).Placements() {
		li := lockInfo{Placement: p, Kind: p.Kind.String()}
		var s shmlock.State
		switch p.Kind {
		case region.KindMutex:
			if s, err = shmlock.Inspect(r, p.Off); err != nil {
				return nil, err
			}
		case region.KindRWMutex:
			st, err := shmlock.InspectRW(r, p.Off)
			if err != nil {
				return nil, err
			}
			s, li.ReadersFreed = st.Writer, &st.ReadersFreed
			for _, rd := range st.Readers {
				li.Readers = append(li.Readers, readerInfo{Word: fmt.Sprintf("%#x", rd.Word), Shares: rd.Shares, Holder: *holder(rd.Holder)})
			}
		default:
			st, err := seqlock.Inspect(r, p.Off)
			if err != nil {
				return nil, err
			}
			s = st.Writer
			if p.Kind == region.KindSeqLock {
				li.Seq, li.Dirty = &st.Seq, &st.Dirty
			} else {
				li.Published, li.CopySeqs = &st.Published, &st.CopySeqs
			}
		}
		li.Held, li.Owner, li.Generation = s.Held, fmt.Sprintf("%#x", s.Owner), s.Generation
		li.Recoveries, li.Waiters, li.OwnerDied = s.Recoveries, s.Waiters, s.OwnerDied
		li.HeldForMS = s.HeldFor.Milliseconds()
		if s.Held {
			li.Holder = holder(s.Holder)
		}
		rep.Locks = append(rep.Locks, li)
	}
	return rep, nil
}

func inspectCmd(args []string) error {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON, for scripts")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), `usage: shmlock inspect [-json] <region>

Shows a region's header, the processes attached to it, and every lock and
seqlock in it: free or held, the holder's pid and whether it is alive, dead or
unverifiable (and why), how long it has held, the fencing generation,
recoveries so far, whether waiters sleep, a seqlock's sequence and dirty
state, and the processes that hold read shares of an rwmutex. It opens the
region read-only: inspecting never changes it.`)
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errUsage
	}
	rep, err := inspectRegion(pos[0])
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	printReport(os.Stdout, rep)
	return nil
}

func printReport(out io.Writer, rep *report) {
	g := rep.Region
	fmt.Fprintf(out, "region %s: layout version %d, %s mode, %d data bytes, %d slots; created %s by pid %d; %d attachments so far\n",
		g.Path, g.Version, g.Mode, g.DataSize, g.Slots, g.Created.Format(time.DateTime), g.CreatorPID, g.Attaches)

	fmt.Fprintf(out, "\nattached processes: %d\n", len(rep.Attached))
	if len(rep.Attached) > 0 {
		tw := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "  SLOT\tPID\tSTATE\tATTACHED\tWHY")
		for _, h := range rep.Attached {
			at := "-"
			if !h.Attached.IsZero() {
				at = h.Attached.Format(time.DateTime)
			}
			fmt.Fprintf(tw, "  %d\t%d\t%s\t%s\t%s\n", h.Slot, h.PID, h.State, at, h.Reason)
		}
		tw.Flush()
	}

	fmt.Fprintf(out, "\nlocks: %d\n", len(rep.Locks))
	if len(rep.Locks) == 0 {
		fmt.Fprintln(out, "  (none placed: locks are found by the tag shmlock.New and seqlock place on their line)")
		return
	}
	tw := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "  OFFSET\tKIND\tSIZE\tSTATE\tHOLDER\tVERDICT\tHELD FOR\tGEN\tRECOVERIES\tWAITERS\tDATA")
	var notes []string
	for _, l := range rep.Locks {
		state, pid, verdict, heldFor := "free", "-", "-", "-"
		if l.Held {
			state, pid, verdict = "held", strconv.Itoa(int(l.Holder.PID)), l.Holder.State
			heldFor = "unknown"
			if l.HeldForMS > 0 {
				heldFor = ">= " + (time.Duration(l.HeldForMS) * time.Millisecond).String()
			}
			notes = append(notes, holderNote(g.Path, l))
		}
		for _, rd := range l.Readers {
			notes = append(notes, readerNote(g.Path, l, rd))
		}
		if l.OwnerDied {
			state += ", owner died"
		}
		size := "-"
		if l.Size > 0 {
			size = strconv.Itoa(l.Size)
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", l.Off, l.Kind, size, state, pid, verdict,
			heldFor, l.Generation, l.Recoveries, yesNo(l.Waiters), dataState(l))
	}
	tw.Flush()
	for _, n := range notes {
		fmt.Fprintln(out, n)
	}
}

// holderNote explains a held lock's verdict and says what to do.
func holderNote(path string, l lockInfo) string {
	h := l.Holder
	who := fmt.Sprintf("pid %d", h.PID)
	if h.TID != 0 {
		who += fmt.Sprintf(" (thread %d)", h.TID)
	}
	s := fmt.Sprintf("\n  @%d owner %s: %s is %s: %s.", l.Off, l.Owner, who, h.State, h.Reason)
	switch h.State {
	case "dead":
		s += "\n    The next waiter takes the lock over (and is told: Guard.Recovered)."
	case "unverifiable":
		s += fmt.Sprintf("\n    Not taken over automatically. If that process is known to be gone:\n"+
			"    shmlock break %s %d --owner %s", path, l.Off, l.Owner)
	default:
		s += fmt.Sprintf("\n    A live holder is never robbed: find out why pid %d does not unlock\n"+
			"    (ps -o pid,stat,wchan -p %d; a Go process prints its goroutines on SIGQUIT).", h.PID, h.PID)
	}
	return s
}

// readerNote says who holds read shares, the verdict, and what to do.
func readerNote(path string, l lockInfo, rd readerInfo) string {
	h := rd.Holder
	s := fmt.Sprintf("\n  @%d reader %s: pid %d holds %d read shares, and is %s: %s.", l.Off, rd.Word, h.PID, rd.Shares, h.State, h.Reason)
	switch h.State {
	case "dead":
		s += "\n    The next writer frees its shares."
	case "unverifiable":
		s += fmt.Sprintf("\n    Not freed automatically. If that process is known to be gone:\n"+
			"    shmlock break %s %d --reader %s", path, l.Off, rd.Word)
	default:
		s += fmt.Sprintf("\n    A live reader is never robbed: writers wait until pid %d unlocks.", h.PID)
	}
	return s
}

func dataState(l lockInfo) string {
	switch {
	case l.ReadersFreed != nil:
		n := 0
		for _, rd := range l.Readers {
			n += int(rd.Shares)
		}
		return fmt.Sprintf("%d read shares in %d processes, %d dead readers freed", n, len(l.Readers), *l.ReadersFreed)
	case l.Seq != nil:
		s := fmt.Sprintf("seq %d", *l.Seq)
		if *l.Seq&1 != 0 {
			s += " (write open)"
		}
		if *l.Dirty {
			s += ", dirty"
		} else {
			s += ", clean"
		}
		return s
	case l.Published != nil:
		return fmt.Sprintf("published copy %d, seqs %d/%d", *l.Published, l.CopySeqs[0], l.CopySeqs[1])
	}
	return "-"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func breakCmd(args []string) error {
	fs := flag.NewFlagSet("break", flag.ContinueOnError)
	ownerFlag := fs.String("owner", "", "the exact owner word to break (from shmlock inspect or a lock-wait error)")
	readerFlag := fs.String("reader", "", "an RWMutex: the exact reader word whose read shares to free (from shmlock inspect or a lock-wait error)")
	force := fs.Bool("force", false, "break even a holder that probes as alive (breaks mutual exclusion if it is)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), `usage: shmlock break <region> <offset> --owner <value> [-force]
       shmlock break <region> <offset> --reader <value> [-force]

The administrator's way out for a lock whose holder cannot be verified dead
(a process in another PID namespace, say) but is known to be gone. It replaces
exactly that owner word by a free one, in one compare-and-swap, and refuses if
the lock changed hands meanwhile. The next Acquire is told it recovered. A
holder that probes as alive is refused unless -force. With --reader, it frees
the read shares of one process of an RWMutex, if its reader word is exactly
that value.`)
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 || (*ownerFlag == "") == (*readerFlag == "") {
		fs.Usage()
		return errUsage
	}
	off, err := strconv.Atoi(pos[1])
	if err != nil {
		fmt.Fprintf(fs.Output(), "offset %q: not a number\n", pos[1])
		fs.Usage()
		return errUsage
	}
	word := *ownerFlag
	if word == "" {
		word = *readerFlag
	}
	owner, err := strconv.ParseUint(word, 0, 64)
	if err != nil {
		return fmt.Errorf("%q: not a number (give it as inspect prints it, e.g. 0x2a00000401)", word)
	}
	r, err := shm.Open(pos[0], shm.Options{NoCreate: true})
	if err != nil {
		return err
	}
	defer r.Close()
	p, ok := region.Of(r).Placement(off)
	if !ok {
		return fmt.Errorf("no lock at offset %d of %s ('shmlock inspect %s' lists them)", off, r.Path(), r.Path())
	}
	if *readerFlag != "" {
		return breakReader(r, p, owner, *force)
	}
	mu, err := shmlock.New(r, off)
	if err != nil {
		return err
	}
	s := mu.Inspect()
	if s.Held && s.Owner&^line.Waiters == owner&^line.Waiters && s.Holder.State == shm.Alive && !*force {
		return fmt.Errorf("refused: the holder of %s@%d, pid %d, is alive (%s); breaking it would let two processes hold the lock."+
			" Find out why it does not unlock, or use -force if you know better", r.Path(), off, s.Holder.PID, s.Holder.Reason)
	}
	if err := mu.Break(owner); err != nil {
		return err
	}
	fmt.Printf("broke the %s at %s@%d: owner %#x (pid %d, %s: %s) replaced by a free word;"+
		" the next Acquire is told it recovered\n", p.Kind, r.Path(), off, owner, s.Holder.PID, s.Holder.State, s.Holder.Reason)
	if p.Kind == region.KindSeqLock {
		fmt.Println("a write the holder left open is closed, and the record marked dirty, by the next writer or reader")
	}
	return nil
}

// breakReader frees the read shares whose reader word is word, of the
// RWMutex placed at p.
func breakReader(r *shm.Region, p region.Placement, word uint64, force bool) error {
	if p.Kind != region.KindRWMutex {
		return fmt.Errorf("the lock at %s@%d is a %v, not an rwmutex: --reader applies to an rwmutex", r.Path(), p.Off, p.Kind)
	}
	rw, err := shmlock.NewRWMutex(r, p.Off)
	if err != nil {
		return err
	}
	var who shmlock.Reader
	for _, rd := range rw.Inspect().Readers {
		if rd.Word == word {
			who = rd
		}
	}
	if who.Word == word && who.Holder.State == shm.Alive && !force {
		return fmt.Errorf("refused: the reader of %s@%d, pid %d, is alive (%s); freeing its shares would let a writer in beside it."+
			" Find out why it does not unlock, or use -force if you know better", r.Path(), p.Off, who.Holder.PID, who.Holder.Reason)
	}
	if err := rw.BreakReader(word); err != nil {
		return err
	}
	fmt.Printf("freed the read shares %#x at %s@%d (pid %d, %s: %s)\n", word, r.Path(), p.Off, who.Holder.PID, who.Holder.State, who.Holder.Reason)
	return nil
}

// errUsage: the command line was wrong; usage has been printed.
var errUsage = errors.New("usage")

// parseInterspersed parses flags that may come before, between or after the
// positional arguments (Go's flag stops at the first positional one), and
// returns the positional arguments.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, errHelp
			}
			return nil, errUsage
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// errHelp: -h was asked for; usage has been printed.
var errHelp = errors.New("help")

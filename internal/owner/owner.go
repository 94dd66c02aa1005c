// Package owner knows who this process is and judges whether another
// process, named by what it published when it attached to a region, is still
// alive.
//
// A verdict has three values, and only Dead licenses a recovery. The evidence,
// strongest first:
//
//  1. The liveness lock. Every attached process holds an OFD byte lock on its
//     own slot of the region file for as long as it is attached. The kernel
//     drops it when the open file description goes away: when its last
//     descriptor is closed and its mapping unmapped (Region.Close does both),
//     which exit of any kind does, before the process becomes a zombie. It is
//     seen from any PID namespace. Free means the holder is gone (or closed
//     the region, which abandons its locks).
//  2. The process itself, checked only when it lives in our PID namespace
//     (a PID from another namespace names some other process here, or none)
//     and both it and we read /proc of that namespace (see Self). kill(pid,
//  0. failing with ESRCH proves death, EPERM existence. A PID that is 0,
//     negative or above pid_max is a corrupt record: it is never passed to
//     kill (kill(0, …) would signal our process group, kill(-1, …) every
//     process we may signal).
//  3. What /proc/<pid>/stat says: a zombie (state Z or X, no thread left),
//     or a start time other than the one it published (PID reuse; compared
//     only within one time namespace, since /proc shifts start times by the
//     reader's boot-time offset).
//
// A held liveness lock is overruled only by ESRCH: /proc readings have too
// many ways to mislead (a time namespace, a thread-group leader that exited
// while its threads run on, a /proc of another namespace) to rob a process
// the kernel says is attached. They decide only where the lock cannot be
// queried. Where nothing can be read (no lock support and a holder in
// another namespace) the verdict is Unverifiable, which is never stolen
// from either.
package owner

import (
	"fmt"
)

// Process is what an attached process publishes about itself: enough to find
// it again and to tell it from a later process that reuses its PID.
type Process struct {
	PID    int32  // in its own PID namespace
	Start  uint64 // start time in clock ticks after boot: field 22 of /proc/<pid>/stat; 0 if unknown
	NS     uint64 // inode of its PID namespace (/proc/self/ns/pid); 0 if unknown
	TimeNS uint64 // inode of its time namespace (/proc/self/ns/time); 0 if unknown
}

// State is the outcome of a probe.
type State uint8

const (
	Alive        State = iota + 1 // evidence that it runs (it may be stopped or slow)
	Dead                          // evidence that it is gone: recovery is licensed
	Unverifiable                  // no evidence either way: never recovered automatically
)

func (s State) String() string {
	switch s {
	case Alive:
		return "alive"
	case Dead:
		return "dead"
	case Unverifiable:
		return "unverifiable"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// Liveness is what the holder's liveness lock says.
type Liveness uint8

const (
	LockUnknown Liveness = iota // could not be queried
	LockHeld                    // some open file description holds it
	LockFree                    // nobody holds it: the holder detached or died
)

// Verdict is a probe's conclusion and the reason for it, in words fit for an
// error message.
type Verdict struct {
	State  State
	Reason string
	// ProcState is the one-letter state from /proc (R, S, D, T, t, Z, X) when
	// it was read, 0 otherwise.
	ProcState byte

	gone bool // the death was proved by ESRCH
}

func (v Verdict) String() string { return v.State.String() + " (" + v.Reason + ")" }

// Judge combines the liveness lock and the process evidence for p as seen
// from self. It never calls kill with a PID below 1 or above pid_max.
func Judge(self, p Process, live Liveness) Verdict {
	pv, ok := procEvidence(self, p)
	switch live {
	case LockFree:
		v := Verdict{State: Dead, Reason: "its liveness lock is free: it exited or closed the region"}
		// Say more when we can, for the humans reading the error; the
		// verdict does not depend on it.
		if pv.State == Dead || pv.State == 0 && pv.Reason != "" {
			v.Reason = pv.Reason + "; " + v.Reason
			v.ProcState = pv.ProcState
		}
		return v
	case LockHeld:
		if ok && pv.gone {
			// The lock can outlive its process only through a descriptor
			// that escaped to another process (fork without exec,
			// SCM_RIGHTS, pidfd_getfd); ESRCH settles it.
			return pv
		}
		if ok && pv.State == Dead {
			// /proc says dead (a zombie, a reused PID) but the lock is
			// held: an escaped descriptor, or /proc misleading us. Not
			// ours to decide; not "alive" either, which would hide the
			// way out from the operator.
			return Verdict{State: Unverifiable, ProcState: pv.ProcState,
				Reason: pv.Reason + "; yet its liveness lock is held: a descriptor of the region may have outlived it"}
		}
		v := Verdict{State: Alive, Reason: "its liveness lock is held", ProcState: pv.ProcState}
		if pv.Reason != "" {
			v.Reason = pv.Reason + "; " + v.Reason
		}
		return v
	}
	if ok {
		return pv
	}
	return Verdict{State: Unverifiable, Reason: pv.Reason + "; and its liveness lock cannot be queried"}
}

// procEvidence judges p from the process table. ok is false when the table
// says nothing usable about p (then Reason says why).
func procEvidence(self, p Process) (v Verdict, ok bool) {
	if p.PID <= 0 || p.PID > PIDMax() {
		return Verdict{Reason: fmt.Sprintf("its record holds an impossible pid %d", p.PID)}, false
	}
	if p.NS == 0 || self.NS == 0 {
		return Verdict{Reason: fmt.Sprintf("pid %d: PID namespace unknown", p.PID)}, false
	}
	if p.NS != self.NS {
		return Verdict{Reason: fmt.Sprintf("pid %d in another PID namespace (pid:[%d]), which this process cannot see", p.PID, p.NS)}, false
	}
	switch err := sys.Kill0(int(p.PID)); err {
	case nil, errPermission:
		// It exists (EPERM: another user's); look closer below.
	case errNoProcess:
		return Verdict{State: Dead, Reason: fmt.Sprintf("pid %d does not exist", p.PID), gone: true}, true
	default:
		return Verdict{Reason: fmt.Sprintf("pid %d: kill(0): %v", p.PID, err)}, false
	}
	st, err := sys.Stat(int(p.PID))
	if err != nil {
		// kill said it exists. A missing /proc entry does not prove
		// otherwise (hidepid hides other users' processes), unless kill
		// now says it is gone: only ESRCH proves death.
		if err == errNoProcess && sys.Kill0(int(p.PID)) == errNoProcess {
			return Verdict{State: Dead, Reason: fmt.Sprintf("pid %d does not exist", p.PID), gone: true}, true
		}
		return Verdict{State: Alive, Reason: fmt.Sprintf("pid %d exists (its /proc entry is unreadable: %v)", p.PID, err)}, true
	}
	switch {
	case (st.State == 'Z' || st.State == 'X') && st.Threads <= 1:
		// A leader that exited while other threads run on is Z too,
		// with those threads counted.
		return Verdict{State: Dead, Reason: fmt.Sprintf("pid %d is a zombie", p.PID), ProcState: st.State}, true
	case p.Start != 0 && p.TimeNS != 0 && p.TimeNS == self.TimeNS && st.Start != p.Start:
		// Start times are comparable only when the holder published its
		// own (not 0) and both read them in one time namespace.
		return Verdict{State: Dead, Reason: fmt.Sprintf("pid %d was reused (start time %d, holder's was %d)", p.PID, st.Start, p.Start), ProcState: st.State}, true
	}
	return Verdict{State: Alive, Reason: fmt.Sprintf("pid %d is %s", p.PID, describe(st.State)), ProcState: st.State}, true
}

func describe(state byte) string {
	switch state {
	case 'R':
		return "running"
	case 'S':
		return "sleeping"
	case 'D':
		return "in uninterruptible sleep"
	case 'T':
		return "stopped"
	case 't':
		return "stopped by a tracer"
	case 'I':
		return "idle"
	}
	return fmt.Sprintf("in state %c", state)
}

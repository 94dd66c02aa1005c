package owner

import (
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

type realSys struct{}

func (realSys) Kill0(pid int) error {
	// The last line of defence: kill(0, …) and kill(-n, …) address process
	// groups, and kill(-1, …) every process we may signal.
	if pid <= 0 {
		return unix.EINVAL
	}
	switch err := unix.Kill(pid, 0); err {
	case nil:
		return nil
	case unix.ESRCH:
		return errNoProcess
	case unix.EPERM:
		return errPermission
	default:
		return err
	}
}

func (realSys) Stat(pid int) (Stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		if os.IsNotExist(err) {
			return Stat{}, errNoProcess
		}
		return Stat{}, err
	}
	return ParseStat(b)
}

var (
	pidMaxOnce sync.Once
	pidMax     int32
)

// PIDMax is the kernel's pid_max: no valid PID is larger. If it cannot be
// read, the largest the kernel allows (PID_MAX_LIMIT, 2^22) is used.
func PIDMax() int32 {
	pidMaxOnce.Do(func() {
		pidMax = 1 << 22
		if b, err := os.ReadFile("/proc/sys/kernel/pid_max"); err == nil {
			if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 32); err == nil && n > 0 {
				pidMax = int32(n)
			}
		}
	})
	return pidMax
}

// readSelf reads this process's identity. The PID comes from getpid, the
// start time and namespaces from /proc, and /proc may belong to another PID
// namespace than ours (unshare --pid without --mount-proc, nsenter --pid
// without --mount, a container given the host's /proc): then its numbers
// mean other processes, and using them would judge the living dead. The
// NSpid line of /proc/self/status lists our PID in every namespace from the
// one /proc belongs to down to ours: a single entry equal to getpid() means
// /proc is ours. Otherwise nothing but the PID is published, and neither we
// nor others use /proc evidence about us.
func readSelf() Process {
	p := Process{PID: int32(os.Getpid())}
	if !procIsOurs() {
		return p
	}
	if st, err := (realSys{}).Stat(os.Getpid()); err == nil {
		p.Start = st.Start
	}
	var s unix.Stat_t
	if unix.Stat("/proc/self/ns/pid", &s) == nil {
		p.NS = s.Ino
	}
	switch err := unix.Stat("/proc/self/ns/time", &s); err {
	case nil:
		p.TimeNS = s.Ino
	case unix.ENOENT:
		// A kernel without time namespaces: one time domain for all,
		// and start times are comparable between any two processes.
		p.TimeNS = singleTimeDomain
	}
	return p
}

// singleTimeDomain is the TimeNS of every process on a kernel without time
// namespaces; no namespace inode is that small.
const singleTimeDomain = 1

func procIsOurs() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(rest)
			return len(f) == 1 && f[0] == strconv.Itoa(os.Getpid())
		}
	}
	// Kernels before 4.1 have no NSpid: fall back on /proc/self.
	self, err := os.Readlink("/proc/self")
	return err == nil && self == strconv.Itoa(os.Getpid())
}

//go:build linux

package shmlock_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pan runs SPIN on testdata/mutex.pml with the given defines, compiles the verifier
// with ccflags, runs it with args, and returns its output.
func pan(t *testing.T, mutate func(string) string, defines []string, ccflags []string, args ...string) string {
	t.Helper()
	return panFile(t, "mutex.pml", mutate, defines, ccflags, args...)
}

// panFile is pan on the model in testdata/file.
func panFile(t *testing.T, file string, mutate func(string) string, defines []string, ccflags []string, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	model, err := os.ReadFile(filepath.Join("testdata", file))
	require.NoError(t, err)
	if mutate != nil {
		m := mutate(string(model))
		require.NotEqual(t, string(model), m, "the mutation no longer applies to the model")
		model = []byte(m)
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "model.pml"), model, 0o644))
	run := func(name string, args ...string) string {
		cmd := exec.Command(name, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s %v:\n%s", name, args, out)
		return string(out)
	}
	run("spin", append(append([]string{}, defines...), "-a", "model.pml")...)
	run("cc", append([]string{"-O2", "-w", "-o", "pan", "pan.c"}, ccflags...)...)
	cmd := exec.Command("./pan", args...)
	cmd.Dir = dir
	out, _ := cmd.CombinedOutput() // pan exits non-zero on a violation
	return string(out)
}

var panErrors = regexp.MustCompile(`errors: (\d+)`)

func panErrorCount(t *testing.T, out string) string {
	m := panErrors.FindStringSubmatch(out)
	require.NotNil(t, m, "no verdict in pan's output:\n%s", out)
	return m[1]
}

// TestModel checks the protocol model with SPIN: mutual exclusion and no
// accepted torn read in every interleaving with crashes at every step, no
// non-progress cycle under weak fairness, and that the model does catch the
// "clear, then retake" recovery bug.
func TestModel(t *testing.T) {
	skipUnlessModels(t)
	safety := pan(t, nil, nil, []string{"-DSAFETY"}, "-m1000000")
	assert.Equal(t, "0", panErrorCount(t, safety), safety)
	t.Log("safety:", regexp.MustCompile(`(?m)^\s*[0-9.e+]+ states, stored.*$`).FindString(safety))

	progress := pan(t, nil, nil, []string{"-DNP"}, "-l", "-f", "-m1000000")
	assert.Equal(t, "0", panErrorCount(t, progress), progress)
	t.Log("progress:", regexp.MustCompile(`(?m)^\s*[0-9.e+]+ states, stored.*$`).FindString(progress))

	// The model must catch known bugs, or it proves nothing.
	bug := pan(t, nil, []string{"-DCLEAR_RETAKE"}, []string{"-DSAFETY"}, "-m1000000")
	assert.Equal(t, "1", panErrorCount(t, bug), "the model misses the clear-then-retake bug:\n%s", bug)
	assert.Contains(t, bug, "assertion violated (inside==1)")
	t.Log("clear-then-retake:", regexp.MustCompile(`pan:1: .*`).FindString(bug))

	noDirty := pan(t, func(m string) string {
		return strings.Replace(m, "seq % 2 == 1 -> dirty = true; CRASH_IN;", "seq % 2 == 1 -> CRASH_IN;", 1)
	}, nil, []string{"-DSAFETY"}, "-m1000000")
	assert.Contains(t, noDirty, "assertion violated (a==b)", "the model misses a repair that does not mark dirty")
	t.Log("repair without dirty:", regexp.MustCompile(`pan:1: .*`).FindString(noDirty))

	noReaderRecovery := pan(t, func(m string) string {
		return strings.Replace(m, ":: atomic { owner != NONE && !alive[owner] -> owner = _pid; gen++; inside++; assert(inside == 1) }", ":: false ->", 1)
	}, nil, []string{"-DNP"}, "-l", "-f", "-m1000000")
	assert.Contains(t, noReaderRecovery, "non-progress cycle", "the model misses readers wedged on a dead writer")
	t.Log("readers without recovery:", regexp.MustCompile(`pan:1: .*`).FindString(noReaderRecovery))

	// Robust mode: the kernel frees a dead holder's word, racing the
	// probes, which stay.
	robust := []string{"-DROBUST"}
	safety = pan(t, nil, robust, []string{"-DSAFETY"}, "-m1000000")
	assert.Equal(t, "0", panErrorCount(t, safety), safety)
	t.Log("robust safety:", regexp.MustCompile(`(?m)^\s*[0-9.e+]+ states, stored.*$`).FindString(safety))
	progress = pan(t, nil, robust, []string{"-DNP"}, "-l", "-f", "-m1000000")
	assert.Equal(t, "0", panErrorCount(t, progress), progress)
	t.Log("robust progress:", regexp.MustCompile(`(?m)^\s*[0-9.e+]+ states, stored.*$`).FindString(progress))

	// A kernel that frees the word of a live holder (two processes that
	// share a thread ID): two holders at once.
	sharedTID := pan(t, func(m string) string {
		return strings.Replace(m, ":: atomic { owner != NONE && !alive[owner] -> owner = NONE }", ":: atomic { owner != NONE -> owner = NONE }", 1)
	}, robust, []string{"-DSAFETY"}, "-m1000000")
	assert.Contains(t, sharedTID, "assertion violated (inside==1)", "the model misses a kernel marking a live holder")
	t.Log("kernel marks a live holder:", regexp.MustCompile(`pan:1: .*`).FindString(sharedTID))

	// Readers that take over only a dead owner's word, not a word the
	// kernel freed: they spin for ever on the dead writer's odd sequence.
	noFreeTakeover := pan(t, func(m string) string {
		return strings.Replace(m, ":: atomic { owner == NONE -> owner = _pid; gen++; inside++; assert(inside == 1) }", ":: false ->", 1)
	}, robust, []string{"-DNP"}, "-l", "-f", "-m1000000")
	assert.Contains(t, noFreeTakeover, "non-progress cycle", "the model misses readers wedged on a word the kernel freed")
	t.Log("robust readers without the free takeover:", regexp.MustCompile(`pan:1: .*`).FindString(noFreeTakeover))
}

// TestWaitModel checks the waiting policy's model (wait.pml): with every
// process alive, no sleeper is left asleep without a timer (no lost
// wake-up), also when a woken waiter leaves without the lock; with up to two
// deaths at the new steps, mutual exclusion holds and every live worker
// finishes on the timers the deaths enable. Each mutant fails.
func TestWaitModel(t *testing.T) {
	skipUnlessModels(t)
	safety := []string{"-DSAFETY"}
	for _, c := range []struct {
		name    string
		mutate  func(string) string
		defines []string
		errors  string
	}{
		{"alive", nil, []string{"-DNOCRASH"}, "0"},
		{"deaths", nil, nil, "0"},
		{"woken bit loses a wake-up", nil, []string{"-DNOCRASH", "-DWOKEN"}, "1"},
		{"reservation not undone", nil, []string{"-DNOCRASH", "-DNO_UNRESERVE"}, "1"},
		{"a class named taken as woken", nil, []string{"-DNOCRASH", "-DCLASS_TRUSTED"}, "1"},
		{"a waiter leaves without the lock", nil, []string{"-DNOCRASH", "-DLEAVE"}, "0"},
		{"a waiter leaves without the lock, with deaths", nil, []string{"-DLEAVE"}, "0"},
		{"leaving without handing the wake on", nil, []string{"-DNOCRASH", "-DLEAVE", "-DNO_PASSON"}, "1"},
		{"stale lease never taken over", func(m string) string {
			return strings.Replace(m, "(lease == _pid || lease == NONE || !alive[lease])", "(lease == _pid || lease == NONE)", 1)
		}, nil, "1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := panFile(t, "wait.pml", c.mutate, c.defines, safety, "-m1000000")
			assert.Equal(t, c.errors, panErrorCount(t, out), out)
		})
	}
}

// skipUnlessModels skips a test of a SPIN model where it cannot, or need not,
// run.
func skipUnlessModels(t *testing.T) {
	if _, err := exec.LookPath("spin"); err != nil {
		t.Skip("spin is not installed (.ci/run installs it: apt-get install spin)")
	}
	if testing.Short() {
		t.Skip("model checking takes a minute")
	}
	if raceBuild {
		t.Skip("the model is C: checking it again under the race detector proves nothing new")
	}
}

// TestRWModel checks the RWMutex's model (rwmutex.pml) with SPIN: with up to
// two crashes at every step, never a live writer beside a live reader or
// another writer, and no live process blocked for ever, asleep without a
// wake (the model has no timers) included. The model must catch readers
// counted anonymously (a dead reader's share wedges the writers), a reader
// that does not look at the writers' word after its add, a writer that
// frees the shares of a reader that is alive, and three lost wake-ups: a
// last drop that does not signal, and a writer that reads the events' word,
// or names the slot it drains, after its look at the share.
func TestRWModel(t *testing.T) {
	skipUnlessModels(t)
	safety := []string{"-DSAFETY"}
	for _, c := range []struct {
		name    string
		mutate  func(string) string
		defines []string
		want    string // in pan's output
	}{
		{"as built", nil, nil, "errors: 0"},
		{"readers counted anonymously", nil, []string{"-DANON"}, "invalid end state"},
		{"no look after the add", nil, []string{"-DNO_LOOK"}, "assertion violated (win==0)"},
		{"a live reader's shares freed", func(m string) string {
			return strings.Replace(m, "shares[s] != 0 && !alive[s] -> v = shares[s]", "shares[s] != 0 -> v = shares[s]", 1)
		}, nil, "errors: 1"},
		{"a last drop without a signal", nil, []string{"-DNO_WAKE"}, "invalid end state"},
		{"the events read after the look", nil, []string{"-DLATE_READ"}, "invalid end state"},
		{"the slot drained named after the look", nil, []string{"-DLATE_SLOT"}, "invalid end state"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := panFile(t, "rwmutex.pml", c.mutate, c.defines, safety, "-m1000000")
			assert.Contains(t, out, c.want, out)
			t.Log(regexp.MustCompile(`(?m)^\s*[0-9.e+]+ states, stored.*$|pan:1: .*`).FindString(out))
		})
	}
}

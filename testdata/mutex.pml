/*
 * A model of shmlock's protocol, checked with SPIN (see model_test.go):
 * the robust mutex (owner word CAS, probe, recovery CAS, release), the
 * SeqLock written under it (sequence parity, dirty state, two data words
 * stored one at a time), and readers that recover a dead writer. Any
 * process may crash at any step, except that one always survives.
 *
 * Each step is labelled with the name the Go code uses at that step (its
 * fault.Point, or the function), so model and code can be read side by side.
 *
 * Properties:
 *   mutex     at most one live process is inside a critical section
 *   torn      a reader never accepts a record whose two words differ
 *   no wedge  every process is bounded (WRITES writes, READS reads), so a
 *             live process blocked for ever, on a dead holder say, is an
 *             invalid end state, which the safety run reports; a reader
 *             retrying for ever is a non-progress cycle (pan -l, under weak
 *             fairness)
 *
 * -DCLEAR_RETAKE models the classic bug: recovery that clears the dead
 * owner's word with a plain store and then takes the lock with a CAS.
 *
 * -DROBUST adds the kernel of robust mode: at some moment after a holder's
 * death it frees the dead owner's word (FUTEX_OWNER_DIED, the generation
 * kept), racing the waiters' probes and recovery CASes, which stay.
 */

#define N 4           /* _pid 0 is init; 1, 2 write, 3 reads */
#define NONE 255

byte owner = NONE;    /* the owner word: holder ... */
byte gen = 0;         /* ... and generation (mod 256 here) */
bool alive[N];        /* the liveness lock: cleared by the kernel at death */
byte crashes = 0;     /* at most 2 of the 3: one always survives */

byte seq = 0;         /* SeqLock sequence, odd while a write is under way */
bool dirty = false;   /* SeqLock state */
byte d0 = 0, d1 = 0;  /* the record: two words, written one at a time */

byte inside = 0;      /* live processes in a critical section */

/* A crash at this step: the process stops for good, its liveness lock goes.
 * CRASH_IN is a crash inside a critical section: the dead process no longer
 * counts as a holder (the word still names it until someone recovers). */
#define CRASH_POINT  if :: crashes < 2 -> crashes++; alive[_pid] = false; goto dead :: true -> skip fi
#define CRASH_IN     if :: crashes < 2 -> atomic { crashes++; alive[_pid] = false; inside-- }; goto dead :: true -> skip fi

inline acquire() {
	byte o, g;
	do
	:: atomic { owner == NONE -> owner = _pid; gen++; break }      /* CAS from free: Lock fast path */
	:: atomic { owner != NONE && !alive[owner] -> o = owner; g = gen } /* Probe says Dead (lockSlow, TryAcquire) */
	   CRASH_POINT;                                                   /* fault.MutexProbedDead */
#ifdef CLEAR_RETAKE
	   owner = NONE;                                                  /* the bug: a blind clear ... */
	   CRASH_POINT;
	   atomic { owner == NONE -> owner = _pid; gen++; break }         /* ... then retake */
#else
	   if
	   :: atomic { owner == o && gen == g -> owner = _pid; gen++ }; break /* recovery CAS from the exact word */
	   :: else -> skip                                                /* the word changed: look again */
	   fi
#endif
	od
}

/* closeDeadWrite: a write left open by a dead writer is marked dirty and
 * closed. The caller holds the lock. */
inline closeDeadWrite() {
	if
	:: seq % 2 == 1 -> dirty = true; CRASH_IN; seq++               /* fault.SeqRepairDirty */
	:: else -> skip
	fi
}

#define WRITES 2
#define READS 2

proctype Writer() {
	byte v, k;
	alive[_pid] = true;
	do
	:: k == WRITES -> break
	:: k < WRITES -> k++;
	   acquire();
	   atomic { inside++; assert(inside == 1) }                    /* mutual exclusion */
	   CRASH_IN;                                                  /* fault.MutexAcquired */
	   closeDeadWrite();
	   seq++;                                                        /* Write: odd */
	   CRASH_IN;                                                  /* fault.SeqWriteOdd */
	   v = 1 - v;
	   d0 = v;
	   CRASH_IN;                                                  /* fault.SeqWriteMidData */
	   d1 = v;
	   dirty = false;                                                /* Release(committed) after a full Store */
	   CRASH_IN;                                                  /* fault.SeqReleaseState */
	   seq++;                                                        /* even */
	   CRASH_IN;                                                  /* fault.SeqReleaseEven */
	   atomic { inside--; owner = NONE }                             /* Unlock: CAS to free */
	od;
dead:
	skip
}

/* A reader: copies the record between two reads of the sequence and checks
 * what it accepts. On an odd sequence it may recover a dead writer. */
proctype Reader() {
	byte s1, s2, a, b, k;
	bool st;
	alive[_pid] = true;
	do
	:: k == READS -> break
	:: k < READS ->
	   s1 = seq;
	   if
	   :: s1 % 2 == 0 ->
	      st = dirty; a = d0; b = d1; s2 = seq;
	      if
	      :: s1 == s2 && !st -> assert(a == b);                    /* no torn read accepted */
progress_read:	 k++
	      :: s1 == s2 && st ->                                       /* ErrDirty: told, a read all the same */
progress_dirty:	 k++
	      :: else -> skip                                            /* retry */
	      fi
	   :: else ->
	      /* recoverDeadWriter: TryAcquire takes the lock only if its
	       * holder is dead, or if it is free (robust mode: the kernel
	       * freed it at the writer's death); then the repair, then
	       * release. */
	      if
	      :: atomic { owner != NONE && !alive[owner] -> owner = _pid; gen++; inside++; assert(inside == 1) }
	         CRASH_IN;                                               /* fault.SeqReaderTookOver */
	         closeDeadWrite();
	         atomic { inside--; owner = NONE }
	      :: atomic { owner == NONE -> owner = _pid; gen++; inside++; assert(inside == 1) }
	         CRASH_IN;                                               /* fault.SeqReaderTookOver */
	         closeDeadWrite();
	         atomic { inside--; owner = NONE }
	      :: else -> skip
	      fi
	   fi
	od;
dead:
	skip
}

#ifdef ROBUST
/* The kernel's walk of a dead process's robust list (handle_futex_death): a
 * compare-and-exchange from the dead owner's word to a free one. */
proctype Kernel() {
end:	do
	:: atomic { owner != NONE && !alive[owner] -> owner = NONE }
	od
}
#endif

init {
	atomic {
		run Writer(); run Writer(); run Reader();
#ifdef ROBUST
		run Kernel()
#endif
	}
}

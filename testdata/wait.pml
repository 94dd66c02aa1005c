/*
 * A model of the Mutex's waiting policy (wait.go), checked with SPIN (see
 * model_test.go): the waiters bit, futex sleep and wake, the
 * starving state and its reserved word, and the prober lease, with up to two
 * deaths (say, a prober's and a holder's) at each new step. Each step is labelled with the Go code's name for it.
 *
 * Time is abstract. A sleep ends by a wake, or by a timeout; timeouts are
 * enabled only once some process has died, so that with every process alive
 * nobody relies on a timer:
 *   no lost wake-up   -DNOCRASH: every worker finishes, none is left asleep
 *                     (a live sleeper blocked for ever is an invalid end
 *                     state, which the safety run reports)
 *   mutex             at most one live holder, with deaths
 *   no wedge          with deaths: every live worker finishes, on wakes or
 *                     on the timers the deaths enable (the prober's, and a
 *                     stale lease's takeover)
 *
 * One age class stands for the code's eight: a sleeper that has waited long
 * names it in the wait word (old: the lock is starving), and a reserved
 * release wakes a sleeper of that class first, any sleeper if it finds none.
 *
 * -DLEAVE lets one woken waiter leave without the lock, as one whose region
 * is closed or whose context ended does (quit); -DNO_PASSON is the mutant
 * that leaves without handing on the wake it may have taken.
 *
 * Mutants: -DNO_UNRESERVE leaves a reservation that woke nobody in place;
 * -DWOKEN skips a release's wake while a woken sleeper has not looked (a
 * lost wake-up, found in the -DNOCRASH run); -DCLASS_TRUSTED takes a class
 * named in the wait word as a sleeper woken, even when its wake found nobody.
 */

#define W 3            /* workers: _pid 1..3 */
#define CRASHES 2      /* deaths at most: a prober's and a holder's */
#define NONE 0
#if defined(NOCRASH) && !defined(LEAVE)
#define K 2            /* acquisitions each */
#else
#define K 1            /* with deaths: one each, to keep the state space small */
#endif

byte owner = NONE;     /* the owner word: holder ... */
bool wbit = false;     /* ... and its waiters bit; owner NONE with wbit is reserved */
bool woken = false;    /* the wait word */
bool old = false;      /* the wait word's age class: starving */
bool cls[W+1];         /* a sleeper's futex mask: of the old class, or not */
byte lease = NONE;     /* the prober: its holder, abstracting the beat counter */
bool asleep[W+1];      /* in futex_wait */
bool alive[W+1];
byte crashes = 0;
byte leaves = 0;       /* -DLEAVE: waiters that left without the lock */
byte inside = 0;

/* A death at this step: the process stops for good, its liveness goes, and
 * if it held the lock it no longer counts as a holder (the word still names
 * it until someone recovers). */
#ifdef NOCRASH
#define CRASH skip
#else
#define CRASH if :: atomic { crashes < CRASHES -> crashes++; alive[_pid] = false; asleep[_pid] = false; if :: owner == _pid -> inside = 0 :: else -> skip fi }; goto dead :: true -> skip fi
#endif

/* futex wake of one sleeper; n says whether one was woken */
inline wake1(n) {
	atomic {
		n = 0;
		if
		:: asleep[1] -> asleep[1] = false; n = 1
		:: asleep[2] -> asleep[2] = false; n = 1
		:: asleep[3] -> asleep[3] = false; n = 1
		:: else -> skip
		fi
	}
}

/* wakeOldest: a wake of the sleepers of the class named (WakeMask); a class
 * asleep by nobody is cleared */
inline wakeOldest(n) {
	n = 0;
	if
	:: old ->
	   atomic {
		if
		:: asleep[1] && cls[1] -> asleep[1] = false; n = 1
		:: asleep[2] && cls[2] -> asleep[2] = false; n = 1
		:: asleep[3] && cls[3] -> asleep[3] = false; n = 1
		:: else -> skip
		fi
	   };
	   if
#ifdef CLASS_TRUSTED
	   :: n == 0 -> old = false; n = 1
#else
	   :: n == 0 -> old = false
#endif
	   :: else -> skip
	   fi
	:: else -> skip
	fi
}

/* wake (Mutex.wake), after a release that left free, reserved or not */
inline wake(res) {   /* uses the caller's n */
	if
	:: !res ->
#ifdef WOKEN
	   /* the woken bit of an earlier design: a release skips its wake
	    * while a woken sleeper has not looked; a wake that found nobody
	    * leaves it set for a moment, and a release then skips a wake
	    * that a new sleeper needed */
	   if
	   :: atomic { woken -> skip }
	   :: atomic { !woken -> woken = true };
	      wake1(n);
	      if :: n == 0 -> woken = false :: else -> skip fi
	   fi
#else
	   wake1(n)
#endif
	:: res ->
	   CRASH;                                               /* fault.MutexReservedBeforeWake */
	   wakeOldest(n);
	   if :: n == 0 -> wake1(n) :: else -> skip fi;
#ifndef NO_UNRESERVE
	   if
	   :: n == 0 -> atomic { if :: owner == NONE && wbit -> wbit = false :: else -> skip fi }; wake1(n)
	   :: else -> skip
	   fi
#endif
	fi
}

proctype Worker() {
	byte k, o, n;
	bool slept, wb, res;
	alive[_pid] = true;
	do
	:: k == K -> break
	:: k < K -> k++;
	   slept = false;
	   /* lockSlow (the fast path is its first CAS from a plain free word) */
	   do
	   :: atomic { owner == NONE && (!wbit || slept) -> owner = _pid; wbit = wbit || slept }; break  /* take */
	   :: atomic { owner != NONE && lease == _pid && !alive[owner] -> o = owner; wb = wbit };           /* probe: Dead */
	      if
	      :: atomic { owner == o && wbit == wb -> owner = _pid; wbit = wbit || slept }; break      /* recovery CAS */
	      :: else -> skip
	      fi
	   :: atomic { owner != NONE || (wbit && !slept) -> o = owner; wb = wbit };
	      /* sleep: the waiters bit, the role, the flags, the futex */
	      if
	      :: wb -> skip
	      :: !wb -> if :: atomic { owner == o && !wbit -> wbit = true; wb = true } :: else -> goto again fi
	      fi;
	      if
	      :: atomic { lease == NONE || !alive[lease] -> lease = _pid };                          /* role: claim */
	         CRASH                                                                             /* fault.MutexProberClaimed */
	      :: else -> skip
	      fi;
	      if :: slept -> woken = false :: else -> skip fi;
	      if :: slept -> cls[_pid] = true; old = true :: true -> skip fi;                     /* its age class: old, or not yet */
	      CRASH;                                                                               /* fault.MutexWaiterBeforeSleep */
	      atomic { if :: owner == o && wbit == wb -> asleep[_pid] = true :: else -> skip fi };   /* futex_wait */
	      if
	      :: atomic { !asleep[_pid] -> skip }                                                   /* woken, or EAGAIN */
	      :: atomic { asleep[_pid] && crashes > 0 && (lease == _pid || lease == NONE || !alive[lease]) -> asleep[_pid] = false }
	                                                                                            /* timeout, once deaths enable timers */
	      fi;
	      slept = true; cls[_pid] = false;
#ifdef LEAVE
	      /* quit: one waiter, woken, leaves without the lock (its
	       * region closed, or its context ended), handing on the wake
	       * a release may have spent on it */
	      if
	      :: atomic { leaves < 1 -> leaves++ };
	         wb = false;
	         if
	         :: atomic { lease == _pid -> lease = NONE };                                      /* leave */
	            if :: wbit -> wb = true; res = (owner == NONE); wake(res) :: else -> skip fi
	         :: else -> skip
	         fi;
	         if :: !wb -> CRASH :: else -> skip fi;                                              /* fault.MutexWaiterQuit */
#ifndef NO_PASSON
	         if                                                                                /* quit: if leave woke nobody, hand the wake on */
	         :: wb -> skip
	         :: atomic { !wb && owner == NONE && wbit } -> wake(true)
	         :: atomic { !wb && owner == NONE && !wbit } -> wake1(n)
	         :: atomic { !wb && owner != NONE && !wbit -> wbit = true }
	         :: else -> skip
	         fi;
#endif
	         goto gone
	      :: true -> skip
	      fi;
#endif
again:	      skip
	   od;
	   /* won */
	   atomic { inside++; assert(inside == 1) };
	   if :: slept -> woken = false :: else -> skip fi;
	   if
	   :: atomic { lease == _pid -> lease = NONE };                                            /* leave */
	      CRASH;                                                                            /* fault.MutexProberLeft */
	      if :: wbit -> wake(false) :: else -> skip fi
	   :: else -> skip
	   fi;
	   CRASH;                                                                               /* fault.MutexAcquired */
	   /* unlockSlow: free, or reserved if starving and someone sleeps */
	   atomic { inside--; wb = wbit; res = wbit && old; owner = NONE; wbit = res };
	   CRASH;                                                                                  /* fault.MutexReleasedBeforeWake */
	   if :: wb -> wake(res) :: else -> skip fi
	od;
dead:
	skip;
gone:
	skip
}

init {
	atomic { run Worker(); run Worker(); run Worker() }
}

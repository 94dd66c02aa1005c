/*
 * A model of the RWMutex (rwmutex.go), checked with SPIN (see model_test.go):
 * the writers' lock (the owner word's CAS, the probe of a dead holder and the
 * recovery CAS, as in mutex.pml), the readers' shares counted per process on
 * lines of their own, a reader's add-then-look and a writer's take-then-
 * drain, a reader that meets a writer and queues on the writers' lock, and a
 * writer that frees the shares of a reader found dead. Any process may crash
 * at any step, at most twice in a run, so that one always survives.
 *
 * Each step is labelled with the name the Go code uses at it (its
 * fault.Point, or the function).
 *
 * A writer that finds a live reader's share names the slot it drains, reads
 * the drain events' word, looks at the share, and sleeps on the word
 * (FUTEX_WAIT: only if it is unchanged). A last drop by that slot's reader
 * while the writers' word is held changes and wakes it, as does the
 * reader's death (the death watch); readers of other slots leave it alone.
 * The model has no timers: the 50 ms sleep bound of the code is a safety
 * net that the wake-ups must not need.
 *
 * Properties:
 *   exclusion  never a live writer beside a live reader or another live
 *              writer (asserted by each on entering)
 *   no wedge   every process is bounded (WRITES writes, READS reads), so a
 *              live process blocked for ever (a writer waiting on the shares
 *              of a dead reader, or asleep with nobody to wake it) is an
 *              invalid end state, which the safety run reports
 *
 * -DANON counts the readers anonymously, in one word, as pthread rwlocks do:
 * a writer cannot tell a dead reader's share from a live one's, and waits.
 * -DNO_LOOK drops the reader's look at the writers' word after its add.
 * -DNO_WAKE drops the wake of a reader's last drop (a lost wake-up).
 * -DLATE_READ reads the events' word after the look at the share, not
 * before (a lost wake-up).
 * -DLATE_SLOT names the slot drained after the look at the share (a lost
 * wake-up: the last drop between the look and the naming signals nobody).
 */

#define NR 2          /* readers: _pid 1 and 2 */
#define NW 2          /* writers: _pid 3 and 4 */
#define N (1 + NR + NW)
#define NONE 255
#define WRITES 1
#ifndef READS
#define READS 1       /* -DREADS=2 takes minutes and gigabytes */
#endif

byte owner = NONE;    /* the writers' owner word: holder ... */
byte gen = 0;         /* ... and generation */
bool alive[N];        /* the liveness lock: cleared by the kernel at death */
byte crashes = 0;

#ifdef ANON
#define LINE(p) 0
#else
#define LINE(p) p
#endif
byte shares[N];       /* the reader word of each process's line: its shares */
byte events = 0;      /* the drain events' word: its count ... */
byte dslot = 0;       /* ... and the slot drained (0: none) */
bool asleep = false;  /* a writer sleeps on it */
bool claimed[N];      /* the claim bits */

byte rin = 0;         /* live readers inside */
byte win = 0;         /* live writers inside */

/* A death drops the liveness lock, and the death watch wakes a writer
 * asleep on the dead process's line. */
#define SIGNAL atomic { events++; asleep = false }
#define SIGNAL_SLOT atomic { if :: dslot == _pid -> events++; asleep = false :: else -> skip fi }
#define CRASH_POINT if :: crashes < 2 -> atomic { crashes++; alive[_pid] = false; events++; asleep = false }; goto dead :: true -> skip fi
#define CRASH_READING if :: crashes < 2 -> atomic { crashes++; alive[_pid] = false; events++; asleep = false; rin-- }; goto dead :: true -> skip fi
#define CRASH_WRITING if :: crashes < 2 -> atomic { crashes++; alive[_pid] = false; win-- }; goto dead :: true -> skip fi

/* The writers' lock, taken as Mutex.Lock takes it: a CAS from free, or the
 * recovery CAS from the exact word of a holder probed dead. */
inline wlock() {
	byte o, g;
	do
	:: atomic { owner == NONE -> owner = _pid; gen++; break }
	:: atomic { owner != NONE && !alive[owner] -> o = owner; g = gen }  /* fault.MutexProbedDead */
	   CRASH_POINT;
	   if
	   :: atomic { owner == o && gen == g -> owner = _pid; gen++ }; break
	   :: else -> skip
	   fi
	od
}

/* drain: for each claimed line, wait until it holds no share, freeing, by a
 * CAS from the exact word probed, the shares of a process found dead; a
 * live one's are waited for asleep on the events' word, read before the
 * look at the share. */
inline drain() {
	byte s, v, seq;
	for (s : 1 .. N - 1) {
		if
		:: claimed[s] ->
#ifndef LATE_SLOT
			dslot = s;
#endif
			do
			:: seq = events;
#ifdef LATE_READ
			   skip;
#endif
			   if
			   :: atomic { shares[LINE(s)] == 0 } -> break
			   :: atomic { shares[LINE(s)] != 0 && alive[s] } -> /* probed alive */
#ifdef LATE_READ
			      seq = events;
#endif
#ifdef LATE_SLOT
			      dslot = s;
#endif
			      atomic { if :: events == seq -> asleep = true :: else -> skip fi }; /* FUTEX_WAIT */
			      !asleep                                                              /* woken */
#ifndef ANON
			   :: atomic { shares[s] != 0 && !alive[s] -> v = shares[s] } ->          /* probed dead */
			      CRASH_POINT;                                                         /* fault.RWReaderProbedDead */
			      if
			      :: atomic { shares[s] == v -> shares[s] = 0 }                        /* fault.RWReaderFreed */
			      :: else -> skip
			      fi
#endif
			   fi
			od;
			dslot = 0
		:: else -> skip
		fi
	}
}

proctype Reader() {
	byte k, v;
	claimed[_pid] = true;                     /* NewRWMutex: the claim, before any share */
	CRASH_POINT;
	for (k : 1 .. READS) {
		do
		:: shares[LINE(_pid)]++;              /* RLock: the add */
		   CRASH_POINT;                       /* fault.RWReaderAdded */
#ifdef NO_LOOK
		   atomic { rin++; assert(win == 0) }; break
#else
		   if
		   :: atomic { owner == NONE -> rin++; assert(win == 0) }; break
		   :: else ->
			atomic { shares[LINE(_pid)]--; v = shares[LINE(_pid)] } /* drop */
#ifndef NO_WAKE
			if
			:: v == 0 -> SIGNAL_SLOT           /* drop's signal of the last share */
			:: else -> skip
			fi;
#endif
			CRASH_POINT;                       /* fault.RWReaderDropped */
			wlock();                           /* queue on the writers' lock */
			atomic { shares[LINE(_pid)]++; rin++; assert(win == 0) }
			CRASH_READING;                     /* fault.RWReaderShared */
			owner = NONE;                      /* Unlock of the writers' lock */
			break
		   fi
#endif
		od;
		CRASH_READING;                         /* fault.RWReaderBeforeRelease */
		atomic { shares[LINE(_pid)]--; rin--; v = shares[LINE(_pid)] } /* RUnlock */
		CRASH_POINT;
#ifndef NO_WAKE
		if
		:: v == 0 && owner != NONE -> SIGNAL_SLOT /* wakeWriter */
		:: else -> skip
		fi
#endif
	}
dead:
	skip
}

proctype Writer() {
	byte k;
	for (k : 1 .. WRITES) {
		wlock();
		CRASH_POINT;                           /* fault.RWWriterDraining */
		drain();
		atomic { win++; assert(win == 1 && rin == 0) }
		CRASH_WRITING;
		atomic { win--; owner = NONE }         /* Unlock */
		CRASH_POINT
	}
dead:
	skip
}

init {
	byte i;
	atomic {
		for (i : 1 .. N - 1) { alive[i] = true }
		for (i : 1 .. NR) { run Reader() }
		for (i : 1 .. NW) { run Writer() }
	}
}

#include "textflag.h"

// func rawTakeID(all, old *uint64, stack uintptr) int32
//
// Starts a thread that ends at once and returns its ID (or -errno). The
// thread is made with the Go runtime's own clone flags (runtime.newosproc),
// and, as there, with every signal blocked, which it inherits: it runs no
// instruction of the runtime's and takes no signal, and between its start
// and its exit it touches no memory.
TEXT ·rawTakeID(SB),NOSPLIT,$0-28
	// rt_sigprocmask(SIG_SETMASK, all, old, 8)
	MOVD	$2, R0
	MOVD	all+0(FP), R1
	MOVD	old+8(FP), R2
	MOVD	$8, R3
	MOVD	$135, R8
	SVC
	// clone(CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_SYSVSEM|CLONE_THREAD, stack, 0, 0, 0)
	MOVD	$0x50f00, R0
	MOVD	stack+16(FP), R1
	MOVD	$0, R2
	MOVD	$0, R3
	MOVD	$0, R4
	MOVD	$220, R8
	SVC
	CBZ	R0, child
	MOVW	R0, ret+24(FP)
	// rt_sigprocmask(SIG_SETMASK, old, nil, 8)
	MOVD	$2, R0
	MOVD	old+8(FP), R1
	MOVD	$0, R2
	MOVD	$8, R3
	MOVD	$135, R8
	SVC
	RET
child:
	// exit(0): this thread only
	MOVD	$0, R0
	MOVD	$93, R8
	SVC
	MOVD	R0, (R0)

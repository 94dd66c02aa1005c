#include "textflag.h"

// func rawTakeID(all, old *uint64, stack uintptr) int32
//
// Starts a thread that ends at once and returns its ID (or -errno). The
// thread is made with the Go runtime's own clone flags (runtime.newosproc),
// and, as there, with every signal blocked, which it inherits: it runs no
// instruction of the runtime's and takes no signal, and between its start
// and its exit it touches no memory.
TEXT ·rawTakeID(SB),NOSPLIT,$0-16
	// rt_sigprocmask(SIG_SETMASK, all, old, 8)
	MOVL	$175, AX
	MOVL	$2, BX
	MOVL	all+0(FP), CX
	MOVL	old+4(FP), DX
	MOVL	$8, SI
	INT	$0x80
	// clone(CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_SYSVSEM|CLONE_THREAD, stack, 0, 0, 0)
	MOVL	$120, AX
	MOVL	$0x50f00, BX
	MOVL	stack+8(FP), CX
	MOVL	$0, DX
	MOVL	$0, SI
	MOVL	$0, DI
	INT	$0x80
	CMPL	AX, $0
	JEQ	child
	MOVL	AX, ret+12(FP)
	// rt_sigprocmask(SIG_SETMASK, old, nil, 8)
	MOVL	$175, AX
	MOVL	$2, BX
	MOVL	old+4(FP), CX
	MOVL	$0, DX
	MOVL	$8, SI
	INT	$0x80
	RET
child:
	// exit(0): this thread only
	MOVL	$1, AX
	MOVL	$0, BX
	INT	$0x80
	INT	$3

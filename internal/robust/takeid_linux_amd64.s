#include "textflag.h"

// func rawTakeID(all, old *uint64, stack uintptr) int32
//
// Starts a thread that ends at once and returns its ID (or -errno). The
// thread is made with the Go runtime's own clone flags (runtime.clone, with
// CLONE_SETTLS as on amd64; its TLS is a word it never reads), and, as in
// runtime.newosproc, with every signal blocked, which it inherits: it runs no
// instruction of the runtime's and takes no signal, and between its start and
// its exit it touches no memory.
TEXT ·rawTakeID(SB),NOSPLIT,$0-28
	// rt_sigprocmask(SIG_SETMASK, all, old, 8)
	MOVQ	$2, DI
	MOVQ	all+0(FP), SI
	MOVQ	old+8(FP), DX
	MOVQ	$8, R10
	MOVQ	$14, AX
	SYSCALL
	// clone(CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_SYSVSEM|CLONE_THREAD|CLONE_SETTLS, stack, 0, 0, tls)
	MOVQ	$0xd0f00, DI
	MOVQ	stack+16(FP), SI
	MOVQ	$0, DX
	MOVQ	$0, R10
	MOVQ	SI, R8
	MOVQ	$56, AX
	SYSCALL
	CMPQ	AX, $0
	JEQ	child
	MOVL	AX, ret+24(FP)
	// rt_sigprocmask(SIG_SETMASK, old, nil, 8)
	MOVQ	$2, DI
	MOVQ	old+8(FP), SI
	MOVQ	$0, DX
	MOVQ	$8, R10
	MOVQ	$14, AX
	SYSCALL
	RET
child:
	// exit(0): this thread only
	MOVQ	$0, DI
	MOVQ	$60, AX
	SYSCALL
	INT	$3

// Command shmlock is the operator's tool for shmlock regions.
//
//	shmlock demo      start workers on a fresh region, kill holders, narrate the recoveries
//	shmlock inspect   show a region's processes and locks, and their holders (read-only)
//	shmlock break     free a lock whose holder cannot be verified dead, by its exact owner word
//	shmlock torture   kill workers at random for a while, and report any violation
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

const usage = `usage: shmlock <command> [flags]

commands:
  inspect show a region's header, attached processes and every lock in it:
          free or held, by which pid, alive / dead / unverifiable and why, for
          how long; read-only (-json for scripts)
  break   free a lock whose holder cannot be verified dead (another PID
          namespace) but is known to be gone, by its exact owner word
  demo    start worker processes that share a counter under one robust lock,
          SIGKILL the holder in the middle of its critical section, and narrate
          who noticed, how long recovery took, and that no increment was lost
  torture start worker processes that increment a counter under the lock and
          write and verify SeqLock and Record values while a killer SIGKILLs
          them at random; report kills, recoveries, recovery latency, torn
          values and lost increments (exit status 1 on any violation)

Run 'shmlock <command> -h' for a command's flags.
`

func main() {
	flag.Usage = func() { fmt.Fprint(os.Stderr, usage) }
	flag.Parse()
	if flag.NArg() < 1 {
		flag.Usage()
		os.Exit(2)
	}
	var err error
	switch cmd, args := flag.Arg(0), flag.Args()[1:]; cmd {
	case "inspect":
		err = inspectCmd(args)
	case "break":
		err = breakCmd(args)
	case "demo":
		err = demo(args)
	case demoWorkerCmd:
		err = demoWorker(args)
	case "torture":
		err = tortureCmd(args)
	case tortureWorkerCmd:
		err = tortureWorker(args)
	default:
		fmt.Fprintf(os.Stderr, "shmlock: unknown command %q\n\n", cmd)
		flag.Usage()
		os.Exit(2)
	}
	switch {
	case errors.Is(err, errHelp):
	case errors.Is(err, errUsage):
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "shmlock:", err)
		os.Exit(1)
	}
}

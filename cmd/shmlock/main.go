// Command shmlock is the operator's tool for shmlock regions.
//
//	shmlock demo      start workers on a fresh region, kill holders, narrate the recoveries
//	shmlock torture   kill workers at random for a while, and report any violation
package main

import (
	"flag"
	"fmt"
	"os"
)

const usage = `usage: shmlock <command> [flags]

commands:
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
	if err != nil {
		fmt.Fprintln(os.Stderr, "shmlock:", err)
		os.Exit(1)
	}
}

// Command shmlock is the operator's tool for shmlock regions.
//
//	shmlock demo    start workers on a fresh region, kill holders, narrate the recoveries
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

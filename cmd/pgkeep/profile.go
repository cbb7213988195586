package main

import (
	"fmt"
	"os"
	"runtime/pprof"
	"runtime/trace"
)

// startProfile writes a CPU profile of the whole command to the file named
// by $PGKEEP_CPUPROFILE, and an execution trace (where the wall time of a
// short command goes: waits show, unlike in a CPU profile) to the file
// named by $PGKEEP_TRACE, for developers measuring where time goes (see
// bench/). It returns the function that finishes both.
func startProfile() func() {
	var stops []func()
	if path := os.Getenv("PGKEEP_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err != nil {
			fmt.Fprintf(os.Stderr, "pgkeep: PGKEEP_CPUPROFILE: %v\n", err)
		} else if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(os.Stderr, "pgkeep: PGKEEP_CPUPROFILE: %v\n", err)
			f.Close()
		} else {
			stops = append(stops, func() { pprof.StopCPUProfile(); f.Close() })
		}
	}
	if path := os.Getenv("PGKEEP_TRACE"); path != "" {
		if f, err := os.Create(path); err != nil {
			fmt.Fprintf(os.Stderr, "pgkeep: PGKEEP_TRACE: %v\n", err)
		} else if err := trace.Start(f); err != nil {
			fmt.Fprintf(os.Stderr, "pgkeep: PGKEEP_TRACE: %v\n", err)
			f.Close()
		} else {
			stops = append(stops, func() { trace.Stop(); f.Close() })
		}
	}
	return func() {
		for _, stop := range stops {
			stop()
		}
	}
}

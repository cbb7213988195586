package main

import (
	"os"
	"runtime"
	"runtime/debug"
)

// setMemoryLimit gives the Go runtime a soft memory limit sized to the
// work in flight, unless GOMEMLIMIT sets one: 64 MiB plus 16 MiB per
// worker (a 4 MiB block read, its encoded copy, a zstd coder and a part
// buffer each). Without it the heap grows to twice what is live before a
// collection, and a backup of incompressible data on 2 cores peaked at
// 150-170 MiB RSS instead of about 100. The limit is soft: a larger live
// set only makes the collector run more often.
func setMemoryLimit(cfg Config) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	n := max(runtime.GOMAXPROCS(0), cfg.UploadConcurrency, cfg.DownloadConcurrency)
	debug.SetMemoryLimit(int64(64+16*n) << 20)
}

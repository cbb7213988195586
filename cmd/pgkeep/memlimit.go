package main

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"
)

// setMemoryLimit gives the Go runtime a soft memory limit sized to the
// work in flight, unless GOMEMLIMIT sets one: 64 MiB plus 16 MiB per
// worker (a 4 MiB block read, its encoded copy, a zstd coder and a part
// buffer each). Without it the heap grows to twice what is live before a
// collection, and a backup of incompressible data on 2 cores peaked at
// 150-170 MiB RSS instead of about 100. The limit is soft: a larger live
// set only makes the collector run more often, and followLiveHeap raises
// it when the live set itself comes near.
func setMemoryLimit(cfg Config) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	n := max(runtime.GOMAXPROCS(0), cfg.UploadConcurrency, cfg.DownloadConcurrency)
	base := int64(64+16*n) << 20
	debug.SetMemoryLimit(base)
	followOnce.Do(func() { go followLiveHeap(base, 100*time.Millisecond, nil) })
}

var followOnce sync.Once

// followLiveHeap keeps the limit at least the live heap plus half of the
// base: the limit is there to stop transient buffers from doubling the
// heap, not to squeeze what must stay live. A 15 GiB cluster's reference
// manifest is ~150 MiB of block lists; under a 112 MiB limit the collector
// ran without pause, held to half the CPU by the runtime, and took half of
// a full backup's CPU. It never lowers the limit (a process's live set
// shrinks at its end).
func followLiveHeap(base int64, every time.Duration, stop <-chan struct{}) {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	limit := base
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		metrics.Read(s)
		if s[0].Value.Kind() != metrics.KindUint64 {
			return
		}
		if want := int64(s[0].Value.Uint64()) + base/2; want > limit {
			limit = want
			debug.SetMemoryLimit(limit)
		}
	}
}

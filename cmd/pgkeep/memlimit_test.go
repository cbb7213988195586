package main

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

// The soft limit rises to stay above a live heap that outgrew it, so the
// collector does not run without pause; it is restored afterwards.
func TestFollowLiveHeap(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(old)
	const base = 8 << 20
	debug.SetMemoryLimit(base)
	live := make([]byte, 64<<20)
	for i := range live {
		live[i] = byte(i)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { followLiveHeap(base, 5*time.Millisecond, stop); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for debug.SetMemoryLimit(-1) < 64<<20+base/2 && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	<-done
	if got := debug.SetMemoryLimit(-1); got < 64<<20+base/2 {
		t.Fatalf("limit %d MiB with 64 MiB live; want at least %d MiB", got>>20, (64<<20+base/2)>>20)
	}
	runtime.KeepAlive(live)
}

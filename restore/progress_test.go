package restore

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/pg"
)

func TestReplayRateAndETA(t *testing.T) {
	var r ReplayRate
	r.Window = 10 * time.Second
	t0 := time.Unix(1000, 0)
	for i := 0; i <= 30; i++ {
		r.Add(t0.Add(time.Duration(i)*time.Second), pg.LSN(i)*16<<20) // one segment a second
	}
	if got := r.BytesPerSecond(); got < 15.9*(1<<20) || got > 16.1*(1<<20) {
		t.Fatalf("rate %.0f, want 16 MiB/s", got)
	}
	if eta := ETA(pg.LSN(30)*16<<20, pg.LSN(40)*16<<20, r.BytesPerSecond()); eta < 9*time.Second || eta > 11*time.Second {
		t.Fatalf("ETA %s, want 10s", eta)
	}
	r.Add(t0.Add(31*time.Second), 0) // restarted from an earlier point
	if got := r.BytesPerSecond(); got != 0 {
		t.Fatalf("rate after a restart %.0f, want unknown", got)
	}
	if ETA(5, 4, 1) != 0 || ETA(1, 4, 0) != 0 {
		t.Fatal("ETA past the end or without a rate must be unknown")
	}
}

func TestReadLocalWAL(t *testing.T) {
	dir := t.TempDir()
	if l := ReadLocalWAL(filepath.Join(dir, "none")); l.Segments != 0 || l.OK {
		t.Fatalf("missing directory: %+v", l)
	}
	sum := strings.Repeat("a", 64)
	for _, n := range []string{"000000010000000000000005." + sum, "000000010000000000000006." + sum, ".000000010000000000000007.tmp", "prefetch.log"} {
		os.WriteFile(filepath.Join(dir, n), nil, 0o600)
	}
	os.WriteFile(filepath.Join(dir, bulkMarker), []byte("000000010000000000000009\n"), 0o600)
	l := ReadLocalWAL(dir)
	if l.Segments != 2 || !l.OK || l.Last.Name != "000000010000000000000009" {
		t.Fatalf("got %+v, want 2 segments, downloaded up to ...09", l)
	}
	if end := SegmentEnd(l.Last, 16<<20); end != pg.LSN(10*16<<20) {
		t.Fatalf("end %s", end)
	}
}

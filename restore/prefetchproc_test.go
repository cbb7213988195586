package restore

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// wal.prefetch is capped by restore.wal_prefetch_bytes for a valid segment
// size only.
func TestPrefetchCount(t *testing.T) {
	const seg = 16 << 20
	for _, c := range []struct {
		count          int
		budget, segSiz int64
		want           int
	}{
		{8, 0, seg, 8},
		{8, 4 * seg, seg, 4},
		{8, 100 * seg, seg, 8},
		{8, seg - 1, seg, 0},
		{8, 4 * seg, 12345, 8}, // not a segment size: no cap
	} {
		if got := PrefetchCount(c.count, c.budget, c.segSiz); got != c.want {
			t.Errorf("PrefetchCount(%d, %d, %d) = %d, want %d", c.count, c.budget, c.segSiz, got, c.want)
		}
	}
}

// A prefetch directory holding more than half the count of ready segments
// needs no new process; hidden and other files do not count.
func TestNeedPrefetch(t *testing.T) {
	dir := t.TempDir()
	if !needPrefetch(filepath.Join(dir, "absent"), 4) {
		t.Fatal("an absent directory needs a prefetch")
	}
	ready := func(i int) string {
		return "00000001000000000000000" + string(rune('1'+i)) + "." + strings.Repeat("a", 64)
	}
	for i := 0; i < 3; i++ {
		os.WriteFile(filepath.Join(dir, ready(i)), nil, 0o600)
	}
	os.WriteFile(filepath.Join(dir, ".partial"+strings.Repeat("b", 83)), nil, 0o600)
	os.WriteFile(filepath.Join(dir, "prefetch.log"), nil, 0o600)
	if needPrefetch(dir, 4) {
		t.Fatal("3 ready segments of 4: no new prefetch needed")
	}
	if !needPrefetch(dir, 6) {
		t.Fatal("3 ready segments of 6: a prefetch is needed")
	}
}

// A count of 0 starts nothing (no process, no directory).
func TestMaybeStartZeroCount(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "prefetch")
	if err := (PrefetchProcess{Executable: "/nonexistent"}).maybeStart("000000010000000000000001", dir, 16<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("prefetch directory created with count 0: %v", err)
	}
}

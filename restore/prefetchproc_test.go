package restore

import (
	"os"
	"os/exec"
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

// The restore_command prefix moves a prefetched segment into
// pg_wal/RECOVERYXLOG and exits 0; in every other case it runs what
// follows it (wal-fetch in restore_command; here a marker), so it never
// answers "missing" or a failure itself.
func TestTakePrefetchedShell(t *testing.T) {
	seg := "000000010000000000000007"
	run := func(t *testing.T, dir, f, p string) (string, bool) {
		t.Helper()
		cmd := TakePrefetchedShell() + "echo fell-through; exit 3"
		cmd = strings.NewReplacer("%f", f, "%p", p).Replace(cmd)
		c := exec.Command("/bin/sh", "-c", cmd)
		c.Dir = dir
		out, err := c.CombinedOutput()
		if err != nil && !strings.Contains(string(out), "fell-through") {
			t.Fatalf("%s: %v", out, err)
		}
		return string(out), err == nil
	}
	setup := func(t *testing.T) (string, string) {
		dir := t.TempDir()
		pre := filepath.Join(dir, "pg_wal", "pgkeep", "prefetch")
		if err := os.MkdirAll(pre, 0o700); err != nil {
			t.Fatal(err)
		}
		name := filepath.Join(pre, seg+"."+strings.Repeat("c", 64))
		if err := os.WriteFile(name, []byte("segment"), 0o600); err != nil {
			t.Fatal(err)
		}
		return dir, name
	}
	t.Run("prefetched", func(t *testing.T) {
		dir, name := setup(t)
		if out, ok := run(t, dir, seg, "pg_wal/RECOVERYXLOG"); !ok || out != "" {
			t.Fatalf("want a quiet exit 0, got %q ok=%v", out, ok)
		}
		if b, err := os.ReadFile(filepath.Join(dir, "pg_wal", "RECOVERYXLOG")); err != nil || string(b) != "segment" {
			t.Fatalf("RECOVERYXLOG %q %v", b, err)
		}
		if _, err := os.Stat(name); !os.IsNotExist(err) {
			t.Fatalf("prefetched file still there: %v", err)
		}
	})
	for _, c := range []struct{ name, f, p string }{
		{"another segment", "000000010000000000000008", "pg_wal/RECOVERYXLOG"},
		{"a history file", "00000002.history", "pg_wal/RECOVERYHISTORY"},
		{"another destination (pg_rewind)", seg, "/elsewhere/pg_wal/" + seg},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir, name := setup(t)
			if out, ok := run(t, dir, c.f, c.p); ok || !strings.Contains(out, "fell-through") {
				t.Fatalf("want wal-fetch's turn, got %q ok=%v", out, ok)
			}
			if _, err := os.Stat(name); err != nil {
				t.Fatalf("prefetched file touched: %v", err)
			}
		})
	}
	t.Run("a temporary file being written", func(t *testing.T) {
		dir, name := setup(t)
		os.Rename(name, filepath.Join(filepath.Dir(name), "."+seg+".tmp"))
		if out, ok := run(t, dir, seg, "pg_wal/RECOVERYXLOG"); ok || !strings.Contains(out, "fell-through") {
			t.Fatalf("want wal-fetch's turn, got %q ok=%v", out, ok)
		}
	})
	t.Run("not a regular file", func(t *testing.T) {
		dir, name := setup(t)
		os.Remove(name)
		os.Mkdir(name, 0o700)
		if out, ok := run(t, dir, seg, "pg_wal/RECOVERYXLOG"); ok || !strings.Contains(out, "fell-through") {
			t.Fatalf("want wal-fetch's turn, got %q ok=%v", out, ok)
		}
	})
}

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/pgtest"
)

// TestRestoreBulkWALKilled: `pgkeep restore` returns while its bulk WAL
// download goes on in a background process. That process is killed
// (SIGKILL) mid-way: every file it left under a segment's name is whole
// (its content matches the checksum in its name), and recovery, which
// fetches what is missing from the repository itself, reaches the last
// committed marker exactly, without waiting on the dead download's
// leftovers.
func TestRestoreBulkWALKilled(t *testing.T) {
	// One download at a time, so the process is still busy when killed.
	a := newBulkArchive(t, 24, "download_concurrency: 1")
	dir := filepath.Join(pgtest.TempDir(t), "restored")
	pgtest.MkdirFor(t, dir)
	pdir := filepath.Join(dir, "pg_wal", "pgkeep", "prefetch")
	res := runPgkeep(t, a.r.env, "", "restore", "--pgdata", dir)
	if res.code != 0 {
		t.Fatalf("restore: exit %d\n%s", res.code, res.stderr)
	}
	m := regexp.MustCompile(`in the background \(pid (\d+),`).FindStringSubmatch(res.stdout)
	if m == nil {
		t.Fatalf("restore did not leave a background WAL download:\n%s", res.stdout)
	}
	pid, _ := strconv.Atoi(m[1])
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill the bulk download %d: %v", pid, err)
	}
	if _, err := os.Stat(filepath.Join(pdir, ".bulk.plan")); err != nil {
		t.Fatalf("the bulk download was no longer running when killed (%v): the test proves nothing", err)
	}
	// SIGKILL is delivered at once but the process may take a moment to go.
	for i := 0; i < 200 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	left := prefetched(t, pdir)
	if len(left) >= len(a.segments(t)) {
		t.Fatalf("the bulk download had finished (%d segments) when killed", len(left))
	}
	entries, _ := os.ReadDir(pdir)
	for _, e := range entries {
		n := e.Name()
		if len(n) != 24+1+64 {
			continue
		}
		data, err := os.ReadFile(filepath.Join(pdir, n))
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != n[25:] || len(data) != segSize {
			t.Fatalf("%s is not a whole segment (%d bytes)", n, len(data))
		}
	}
	t.Logf("killed the bulk download with %d of %d segments local", len(left), len(a.segments(t)))
	c := pgtest.Existing(t, dir, pgtest.Options{Env: a.r.env, Conf: []string{"archive_mode = off"}})
	start := time.Now()
	c.Start(t)
	waitRecoveryDone(t, c, false)
	if got := marks(t, c); got != a.allMarks {
		t.Fatalf("marks %s, want %s\n%s", got, a.allMarks, pgtest.Tail(c.Log(), 3000))
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("recovery took %s after the download was killed: waiting on its leftovers?", d)
	}
	if strings.Contains(c.Log(), "FATAL") && !strings.Contains(c.Log(), "the database system is starting up") {
		t.Logf("log:\n%s", pgtest.Tail(c.Log(), 3000))
	}
}

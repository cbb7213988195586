package e2e

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/pgtest"
)

// fsMarkedArchive is newMarkedArchive on a local repository whose config
// file sits at an awkward path (a space and a quote), named only by
// PGKEEP_CONFIG.
func fsMarkedArchive(t *testing.T) *markedArchive {
	t.Helper()
	r := newRepo(t, repoOpts{kind: "fs"})
	odd := filepath.Join(r.dir, "conf dir", "it's.yml")
	if err := os.MkdirAll(filepath.Dir(odd), 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(r.config)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(odd, data, 0o644); err != nil {
		t.Fatal(err)
	}
	pgtest.Chown(t, r.dir)
	r.config = odd
	for i, kv := range r.env {
		if strings.HasPrefix(kv, "PGKEEP_CONFIG=") {
			r.env[i] = "PGKEEP_CONFIG=" + odd
		}
	}
	primary := archivingCluster(t, r)
	conn := primary.Conn(t)
	primary.Exec(t, conn, "CREATE TABLE marks (n int PRIMARY KEY)")
	takeBackup(t, r, primary)
	a := &markedArchive{r: r, primary: primary}
	var last string
	for i := 1; i <= 7; i++ {
		primary.Exec(t, conn, "INSERT INTO marks VALUES ($1)", i)
		var lsn string
		conn.QueryRow(context.Background(), "SELECT pg_current_wal_lsn()::text").Scan(&lsn)
		a.lsns = append(a.lsns, lsn)
		conn.QueryRow(context.Background(), "SELECT pg_walfile_name(pg_switch_wal())").Scan(&last)
	}
	waitArchived(t, primary, last, time.Minute)
	primary.Stop(t)
	return a
}

// repoWAL lists the WAL objects of a local repository.
func repoWAL(t *testing.T, r *testRepo) []string {
	t.Helper()
	var names []string
	root := filepath.Join(r.repoDir, "wal")
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			rel, _ := filepath.Rel(root, p)
			names = append(names, rel)
		}
		return nil
	})
	sort.Strings(names)
	return names
}

// TestRestoreCommandKeepsRepository: a restore that found its config
// through PGKEEP_CONFIG writes a restore_command naming that file, so a
// plain pg_ctl start, with no PGKEEP_* in its environment, recovers from the
// same repository to the target with the exact rows. Settings that came
// only from PGKEEP_* variables are named in a warning.
func TestRestoreCommandKeepsRepository(t *testing.T) {
	a := fsMarkedArchive(t)
	dir := filepath.Join(pgtest.TempDir(t), "restored")
	pgtest.MkdirFor(t, dir)
	env := append(append([]string{}, a.r.env...), "PGKEEP_WAL_PREFETCH=4", "PGKEEP_LOG_LEVEL=info")
	res := runPgkeep(t, env, "", "restore", "--pgdata", dir, "--target-lsn", a.lsns[4], "--target-action", "promote")
	if res.code != 0 {
		t.Fatalf("restore: exit %d\n%s", res.code, res.stderr)
	}
	auto, _ := os.ReadFile(filepath.Join(dir, "postgresql.auto.conf"))
	t.Logf("postgresql.auto.conf: %s", lastLines(string(auto), "restore_command", 1))
	// No PGKEEP_CONFIG, no PGKEEP_*: only what restore wrote.
	c := pgtest.Existing(t, dir, pgtest.Options{Conf: []string{"archive_mode = off"}})
	c.Start(t)
	waitRecoveryDone(t, c, false)
	if got := marks(t, c); got != "1,2,3,4,5" {
		t.Fatalf("restored to marker 5 with a plain pg_ctl start: marks %s\n%s", got, pgtest.Tail(c.Log(), 3000))
	}
	if !strings.Contains(res.stderr, "PGKEEP_WAL_PREFETCH") || !strings.Contains(res.stderr, "PGKEEP_LOG_LEVEL") {
		t.Fatalf("no warning naming the PGKEEP_* settings the restored cluster will not see:\n%s", res.stderr)
	}
}

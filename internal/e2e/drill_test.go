package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/pgtest"
	"github.com/pgkeep/pgkeep/pg"
)

// drillResult is what pgkeep drill --json prints.
type drillResult struct {
	BackupID         string  `json:"backup_id"`
	ScratchDir       string  `json:"scratch_dir"`
	RestoreToQuery   float64 `json:"restore_to_query_seconds"`
	Recovery         float64 `json:"recovery_seconds"`
	Timeline         uint32  `json:"timeline"`
	LSN              string  `json:"lsn"`
	AmcheckRelations int     `json:"amcheck_relations"`
	SQLChecked       bool    `json:"sql_checked"`
}

// assertNothingLeft checks that a drill left no scratch directory in
// parent and no process whose command line names it.
func assertNothingLeft(t *testing.T, what, parent string) {
	t.Helper()
	assertEmptyDir(t, what, parent)
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if strings.Contains(string(cmdline), parent) {
			t.Errorf("%s: process %s still runs: %s", what, p.Name(), strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
}

func countRows(t *testing.T, c *pgtest.Cluster) int {
	t.Helper()
	conn := c.Conn(t)
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM drill_rows").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A drill on a real cluster restores the backup, replays the WAL archived
// after it, checks, measures and removes everything; the member and the
// repository are untouched. A drill of a corrupted backup fails naming the
// object and leaves nothing behind either.
func TestDrill(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs"})
	c := archivingCluster(t, r)
	conn := c.Conn(t)
	c.Exec(t, conn, "CREATE TABLE drill_rows (id int PRIMARY KEY, payload text)")
	c.Exec(t, conn, "INSERT INTO drill_rows SELECT g, md5(g::text) FROM generate_series(1, 1000) g")
	id := takeBackup(t, r, c)
	// Rows only the archived WAL after the backup holds: the SQL check
	// passes only if recovery replayed to the end of the archive.
	c.Exec(t, conn, "INSERT INTO drill_rows SELECT g, md5(g::text) FROM generate_series(1001, 1100) g")
	var seg string
	if err := conn.QueryRow(context.Background(), "SELECT pg_walfile_name(pg_switch_wal())").Scan(&seg); err != nil {
		t.Fatal(err)
	}
	waitArchived(t, c, seg, time.Minute)
	env := backupEnv(r, c)
	pid := pg.PostmasterPID(c.DataDir)
	fi, err := os.Stat(c.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	before := objectSums(t, r.repoDir)

	t.Run("succeeds", func(t *testing.T) {
		parent := pgtest.TempDir(t)
		res := runPgkeep(t, env, "", "drill", "--scratch-dir", parent, "--json",
			"--sql", "SELECT count(*) = 1100 AND max(id) = 1100 FROM drill_rows")
		if res.code != 0 {
			t.Fatalf("drill: exit %d\n%s%s", res.code, res.stdout, res.stderr)
		}
		var d drillResult
		if err := json.Unmarshal([]byte(res.stdout), &d); err != nil {
			t.Fatalf("drill --json: %v\n%s", err, res.stdout)
		}
		if d.BackupID != id || d.RestoreToQuery <= 0 || d.Recovery <= 0 || d.RestoreToQuery < d.Recovery ||
			d.AmcheckRelations == 0 || !d.SQLChecked || d.Timeline != 2 || !strings.HasPrefix(d.ScratchDir, parent+"/") {
			t.Errorf("drill result: %+v\n%s", d, res.stderr)
		}
		t.Logf("restore-to-query %.2fs (recovery %.2fs; noisy: shared machine), %d tables checked", d.RestoreToQuery, d.Recovery, d.AmcheckRelations)
		assertNothingLeft(t, "drill", parent)

		// Text output names the time too.
		res = runPgkeep(t, env, "", "drill", "--scratch-dir", parent, "--amcheck-tables", "-1")
		if res.code != 0 || !strings.Contains(res.stdout, "restore-to-query") || !strings.Contains(res.stdout, id) {
			t.Errorf("drill (text): exit %d\n%s%s", res.code, res.stdout, res.stderr)
		}
		assertNothingLeft(t, "drill (text)", parent)
	})

	t.Run("sql check false", func(t *testing.T) {
		parent := pgtest.TempDir(t)
		res := runPgkeep(t, env, "", "drill", "--scratch-dir", parent, "--amcheck-tables", "-1",
			"--sql", "SELECT count(*) = 5 FROM drill_rows")
		if res.code == 0 || !strings.Contains(lastLine(res.stderr), "sql check") || !strings.Contains(lastLine(res.stderr), "not true") {
			t.Errorf("a failing sql check: exit %d\n%s", res.code, res.stderr)
		}
		t.Logf("failing sql check: %s", lastLine(res.stderr))
		assertNothingLeft(t, "failed sql check", parent)
	})

	t.Run("refuses the member's data directory", func(t *testing.T) {
		res := runPgkeep(t, env, "", "drill", "--scratch-dir", c.DataDir)
		if res.code == 0 || !strings.Contains(lastLine(res.stderr), "overlaps") {
			t.Errorf("drill into the member's data directory: exit %d\n%s", res.code, res.stderr)
		}
		if m, _ := filepath.Glob(filepath.Join(c.DataDir, "pgkeep-drill-*")); len(m) > 0 {
			t.Errorf("drill created %v in the member's data directory", m)
		}
	})

	t.Run("refuses a backup over the budget", func(t *testing.T) {
		parent := pgtest.TempDir(t)
		res := runPgkeep(t, env, "", "drill", "--scratch-dir", parent, "--max-bytes", "1MB")
		if res.code == 0 || !strings.Contains(lastLine(res.stderr), "budget") || !strings.Contains(lastLine(res.stderr), id) {
			t.Errorf("drill over max-bytes: exit %d\n%s", res.code, res.stderr)
		}
		assertNothingLeft(t, "refused drill", parent)
	})

	t.Run("corrupt pack", func(t *testing.T) {
		cp := copyRepo(t, r, "")
		packs, _ := filepath.Glob(filepath.Join(cp.repoDir, "backups", id, "pack", "*"))
		if len(packs) == 0 {
			t.Fatal("no packs")
		}
		flipByte(t, packs[0])
		cpBefore := objectSums(t, cp.repoDir)
		parent := pgtest.TempDir(t)
		res := runPgkeep(t, envWith(env, "PGKEEP_REPOSITORY=file://"+cp.repoDir), "", "drill", "--scratch-dir", parent)
		line := lastLine(res.stderr)
		t.Logf("drill of a corrupt pack: %s", line)
		if res.code == 0 || !strings.Contains(line, "corrupt") || !strings.Contains(line, "pack/"+filepath.Base(packs[0])) {
			t.Errorf("drill of a corrupt pack: exit %d, last line %q\n%s", res.code, line, res.stderr)
		}
		assertNothingLeft(t, "drill of a corrupt pack", parent)
		assertKept(t, "drill of a corrupt pack", cpBefore, objectSums(t, cp.repoDir), nil)
	})

	// The repository byte for byte, and the member: same postmaster, same
	// rows, its data directory not written to by the drills.
	assertKept(t, "drills", before, objectSums(t, r.repoDir), nil)
	if got := pg.PostmasterPID(c.DataDir); got != pid || pid == 0 {
		t.Errorf("the member's postmaster: pid %d before, %d after", pid, got)
	}
	if n := countRows(t, c); n != 1100 {
		t.Errorf("the member has %d rows, want 1100", n)
	}
	if fi2, err := os.Stat(c.DataDir); err != nil || !fi2.ModTime().Equal(fi.ModTime()) {
		t.Errorf("the member's data directory changed: mtime %v, now %v (%v)", fi.ModTime(), fi2.ModTime(), err)
	}
}

// lastLine is the last non-empty line of s: pgkeep's one-line error.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/pgtest"
	"github.com/pgkeep/pgkeep/internal/testbin"
	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/scheduler"
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
// parent and no process of its copy.
func assertNothingLeft(t *testing.T, what, parent string) {
	t.Helper()
	assertEmptyDir(t, what, parent)
	for _, p := range drillProcesses(parent) {
		t.Errorf("%s: still running: %s", what, p)
	}
}

// drillProcesses are the processes of a drill's copy: the postmaster
// names the scratch directory, its children carry the copy's
// cluster_name in their titles.
func drillProcesses(parent string) []string {
	var out []string
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if strings.Contains(string(cmdline), parent) || strings.Contains(string(cmdline), "postgres: pgkeep-drill:") {
			out = append(out, p.Name()+": "+strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	return out
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

	t.Run("target immediate", func(t *testing.T) {
		// Recovery stops where the backup is consistent: without the rows
		// written after it.
		parent := pgtest.TempDir(t)
		res := runPgkeep(t, env, "", "drill", "--scratch-dir", parent, "--amcheck-tables", "-1", "--target", "immediate",
			"--sql", "SELECT count(*) = 1000 FROM drill_rows")
		if res.code != 0 {
			t.Errorf("drill --target immediate: exit %d\n%s%s", res.code, res.stdout, res.stderr)
		}
		assertNothingLeft(t, "drill --target immediate", parent)
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
		// Without pgdata in the config: refused as a running cluster's.
		res = runPgkeep(t, r.env, "", "drill", "--scratch-dir", filepath.Join(c.DataDir, "base"))
		if res.code == 0 || !strings.Contains(lastLine(res.stderr), "running cluster") {
			t.Errorf("drill into a running cluster's data directory: exit %d\n%s", res.code, res.stderr)
		}
		for _, d := range []string{c.DataDir, filepath.Join(c.DataDir, "base")} {
			if m, _ := filepath.Glob(filepath.Join(d, "pgkeep-drill-*")); len(m) > 0 {
				t.Errorf("drill created %v in the member's data directory", m)
			}
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

	t.Run("corrupt WAL", func(t *testing.T) {
		// The segment with the rows written after the backup: recovery
		// must stop there (not promote without them), and the drill name it.
		cp := copyRepo(t, r, "")
		flipByte(t, filepath.Join(cp.repoDir, "wal", seg[:16], seg))
		cpBefore := objectSums(t, cp.repoDir)
		parent := pgtest.TempDir(t)
		res := runPgkeep(t, envWith(env, "PGKEEP_REPOSITORY=file://"+cp.repoDir), "", "drill", "--scratch-dir", parent, "--amcheck-tables", "-1")
		line := lastLine(res.stderr)
		t.Logf("drill with a corrupt WAL segment: %s", line)
		if res.code == 0 || !strings.Contains(line, seg) || !strings.Contains(line, "corrupt") {
			t.Errorf("drill with a corrupt WAL segment: exit %d, last line %q\n%s", res.code, line, res.stderr)
		}
		assertNothingLeft(t, "drill with a corrupt WAL segment", parent)
		assertKept(t, "drill with a corrupt WAL segment", cpBefore, objectSums(t, cp.repoDir), nil)
	})

	t.Run("interrupted", func(t *testing.T) {
		// SIGTERM while the copy's PostgreSQL runs: it is stopped and the
		// scratch directory removed all the same.
		parent := pgtest.TempDir(t)
		// The SQL check keeps the copy running until the signal comes.
		cmd := exec.Command(testbin.Pgkeep(t), "drill", "--scratch-dir", parent, "--amcheck-tables", "-1", "--sql", "SELECT true FROM pg_sleep(600)")
		cmd.Env = append([]string{"PATH=/usr/bin:/bin", "HOME=/tmp"}, env...)
		cmd.Dir = "/"
		var stderr strings.Builder
		cmd.Stderr = &stderr
		pgtest.AsPostgres(t, cmd)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		deadline := time.Now().Add(2 * time.Minute)
		for {
			if m, _ := filepath.Glob(filepath.Join(parent, "pgkeep-drill-*", "data", "postmaster.pid")); len(m) > 0 {
				break
			}
			select {
			case err := <-done:
				t.Fatalf("drill ended (%v) before its PostgreSQL started:\n%s", err, stderr.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatal("the drill's PostgreSQL did not start within 2 minutes")
			}
			time.Sleep(20 * time.Millisecond)
		}
		// The copy's processes are what assertNothingLeft looks for.
		pgtest.WaitFor(t, 30*time.Second, "the copy's processes", func() (bool, error) {
			titled := 0
			for _, p := range drillProcesses(parent) {
				if strings.Contains(p, "postgres: pgkeep-drill:") {
					titled++
				}
			}
			return titled > 0, nil
		})
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err == nil {
				t.Errorf("an interrupted drill exited 0:\n%s", stderr.String())
			}
		case <-time.After(3 * time.Minute):
			cmd.Process.Kill()
			t.Fatal("the drill did not end within 3 minutes of SIGTERM")
		}
		t.Logf("interrupted drill: %s", lastLine(stderr.String()))
		assertNothingLeft(t, "interrupted drill", parent)
	})

	t.Run("daemon job", func(t *testing.T) {
		// A drill job that succeeds and one whose SQL check fails, in a
		// daemon without Patroni: the records and the drill metrics.
		good, bad := pgtest.TempDir(t), pgtest.TempDir(t)
		lockDir := pgtest.MkdirFor(t, filepath.Join(pgtest.TempDir(t), "lock"))
		jobs := fmt.Sprintf(`    - {name: drill-ok, kind: drill, schedule: "0/30 * * * * *", window: 60s, scratch_dir: %s, amcheck_tables: 5, sql: "SELECT count(*) = 1100 FROM drill_rows"}
    - {name: drill-bad, kind: drill, schedule: "15/30 * * * * *", window: 60s, scratch_dir: %s, amcheck_tables: -1, sql: "SELECT false"}
`, good, bad)
		d := startStandaloneDaemon(t, r, c, "solo", lockDir, jobs)
		var okRun, badRun scheduler.Run
		pgtest.WaitFor(t, 4*time.Minute, "a recorded success of drill-ok and a recorded failure of drill-bad", func() (bool, error) {
			select {
			case err := <-d.done:
				d.done <- err
				t.Fatalf("daemon exited: %v\n%s", err, pgtest.Tail(d.Log(), 2000))
			default:
			}
			var okDone, badDone bool
			for _, run := range localRuns(t, lockDir, "drill-ok") {
				okRun, okDone = run, run.Status == scheduler.StatusSucceeded
			}
			for _, run := range localRuns(t, lockDir, "drill-bad") {
				badRun, badDone = run, run.Status == scheduler.StatusFailed
			}
			return okDone && badDone, nil
		})
		if okRun.BackupID != id || okRun.QuerySeconds <= 0 || okRun.Kind != scheduler.JobDrill {
			t.Errorf("drill-ok record: %+v", okRun)
		}
		if !strings.Contains(badRun.Error, "sql check") || !strings.Contains(badRun.Error, id) {
			t.Errorf("drill-bad record: %+v", badRun)
		}
		sc := scrape(t, d.metrics)
		last := metricValue(t, sc, scheduler.MetricDrillLast, `job_name="drill-ok"`)
		if want := float64(okRun.Finished.UnixMilli()) / 1000; last < want {
			t.Errorf("%s{drill-ok} = %v, the record's end is %v", scheduler.MetricDrillLast, last, want)
		}
		if q := metricValue(t, sc, scheduler.MetricDrillQuery, `job_name="drill-ok"`); q <= 0 {
			t.Errorf("%s{drill-ok} = %v", scheduler.MetricDrillQuery, q)
		}
		if strings.Contains(sc, scheduler.MetricDrillLast+`{job_name="drill-bad"}`) {
			t.Errorf("a drill job that never succeeded has %s", scheduler.MetricDrillLast)
		}
		d.stop(t)
		assertNothingLeft(t, "daemon drill-ok", good)
		assertNothingLeft(t, "daemon drill-bad", bad)
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

// TestDrillAmcheckFindsCorruption: a heap page damaged on the cluster
// itself (no data checksums, so the backup takes it as it is) restores
// and recovers fine; the drill's pg_amcheck finds it and names the table.
// The repository is encrypted: the copy's wal-fetch decrypts with the
// configured identity.
func TestDrillAmcheckFindsCorruption(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs", encrypted: true})
	c := archivingCluster(t, r)
	conn := c.Conn(t)
	c.Exec(t, conn, "CREATE TABLE victim (id int, payload text)")
	c.Exec(t, conn, "INSERT INTO victim SELECT g, md5(g::text) FROM generate_series(1, 100) g")
	c.Exec(t, conn, "CHECKPOINT")
	var file string
	if err := conn.QueryRow(context.Background(), "SELECT pg_relation_filepath('victim')").Scan(&file); err != nil {
		t.Fatal(err)
	}
	conn.Close(context.Background())
	c.Stop(t)
	// The first tuple's xmin (at pd_upper) far in the future.
	p := filepath.Join(c.DataDir, file)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	upper := int(data[14]) | int(data[15])<<8
	copy(data[upper:upper+4], []byte{0xf0, 0xff, 0xff, 0x7f})
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	c.Start(t)
	takeBackup(t, r, c)

	parent := pgtest.TempDir(t)
	res := runPgkeep(t, backupEnv(r, c), "", "drill", "--scratch-dir", parent, "--amcheck-tables", "1000")
	line := lastLine(res.stderr)
	t.Logf("drill of a backup of a corrupt table: %s", line)
	if res.code == 0 || !strings.Contains(line, "pg_amcheck found a problem") || !strings.Contains(line, "victim") {
		t.Errorf("drill of a corrupt table: exit %d, last line %q\n%s%s", res.code, line, res.stdout, res.stderr)
	}
	assertNothingLeft(t, "drill of a corrupt table", parent)
}

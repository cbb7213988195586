package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgkeep/pgkeep/internal/pgtest"
)

// seeded makes an archiving cluster with some data and one backup.
func seeded(t *testing.T, r *testRepo, conf ...string) (*pgtest.Cluster, string) {
	t.Helper()
	c := archivingCluster(t, r, conf...)
	conn := c.Conn(t)
	c.Exec(t, conn, "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)")
	insertBatch(t, conn, 1)
	c.Exec(t, conn, "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 200000) g")
	return c, takeBackup(t, r, c)
}

var downloadedRE = regexp.MustCompile(`(\d+) files written, (\d+) kept, (\d+) removed`)

// TestDeltaRestore: after a restored cluster ran and changed a little, a
// delta restore rewrites only what changed, and the result is the backup.
func TestDeltaRestore(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs", encrypted: true})
	primary, id := seeded(t, r)
	conn := primary.Conn(t)
	insertBatch(t, conn, 2)
	last := switchSegments(t, primary, 1, 0)
	waitArchived(t, primary, last, time.Minute)

	restored := restoreAndStart(t, r, "--backup", id, "--target", "immediate", "--target-action", "promote")
	waitRecoveryDone(t, restored, false)
	rc := restored.Conn(t)
	restored.Exec(t, rc, "INSERT INTO events (batch, payload) VALUES (99, 'diverged')")
	restored.Exec(t, rc, "CHECKPOINT")
	restored.Stop(t)
	dir := restored.DataDir
	os.WriteFile(filepath.Join(dir, "stray-file"), []byte("x"), 0o600)

	// Killed midway, a delta restore leaves a directory PostgreSQL refuses
	// to start: pg_control goes first and comes back last, so the server
	// cannot take the mix of old and new files for a crashed cluster.
	kill := pgkeepCommand(t, r.env, "restore", "--pgdata", dir, "--backup", id, "--delta", "--target", "immediate")
	if err := kill.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := os.Stat(filepath.Join(dir, "global", "pg_control.pgkeep-restore")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			kill.Process.Kill()
			t.Fatal("the delta restore did not start writing")
		}
		time.Sleep(time.Millisecond)
	}
	kill.Process.Kill()
	kill.Wait()
	if _, err := os.Stat(filepath.Join(dir, "global", "pg_control")); !os.IsNotExist(err) {
		t.Fatalf("a killed restore left global/pg_control (%v): PostgreSQL could start on a half-restored directory", err)
	}
	if out, err := pgtest.RunErr(t, nil, "pg_ctl", "-D", dir, "-l", filepath.Join(dir, "half.log"), "-w", "-t", "30", "start"); err == nil {
		pgtest.Run(t, nil, "pg_ctl", "-D", dir, "-m", "immediate", "stop")
		t.Fatalf("PostgreSQL started on a half-restored directory: %s", out)
	}

	res := r.run(t, "restore", "--pgdata", dir, "--backup", id, "--delta", "--target-action", "promote", "--target", "immediate")
	if res.code != 0 {
		t.Fatalf("delta restore: %s", res.stderr)
	}
	m := downloadedRE.FindStringSubmatch(res.stdout)
	if m == nil {
		t.Fatalf("unexpected restore output %q", res.stdout)
	}
	written, _ := strconv.Atoi(m[1])
	kept, _ := strconv.Atoi(m[2])
	removed, _ := strconv.Atoi(m[3])
	if kept < 10*written || written == 0 || removed == 0 {
		t.Fatalf("delta restore wrote %d, kept %d, removed %d files: it should rewrite only the few changed ones", written, kept, removed)
	}
	if _, err := os.Stat(filepath.Join(dir, "stray-file")); !os.IsNotExist(err) {
		t.Fatal("delta restore kept a file the backup does not have")
	}
	c := pgtest.Existing(t, dir, pgtest.Options{Env: r.env, Conf: []string{"archive_mode = off"}})
	c.Start(t)
	waitRecoveryDone(t, c, false)
	if got := batches(t, c); got != "1 rows=500" {
		t.Fatalf("after delta restore: %s", got)
	}
	if res := r.run(t, "verify", id); res.code != 0 {
		t.Fatalf("verify: %s%s", res.stdout, res.stderr)
	}
}

// TestRestoreRefusals: a running cluster's directory and a non-empty one
// are refused and left untouched.
func TestRestoreRefusals(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs"})
	primary, _ := seeded(t, r)
	before := snapshot(t, primary.DataDir)
	for _, args := range [][]string{{}, {"--force"}, {"--delta"}} {
		res := r.run(t, append([]string{"restore", "--pgdata", primary.DataDir}, args...)...)
		if res.code == 0 || !strings.Contains(res.stderr, "postmaster is running") {
			t.Fatalf("restore %v into a running cluster: exit %d %q", args, res.code, res.stderr)
		}
	}
	if after := snapshot(t, primary.DataDir); after != before {
		t.Fatal("refused restore changed the data directory")
	}
	other := pgtest.MkdirFor(t, filepath.Join(pgtest.TempDir(t), "busy"))
	os.WriteFile(filepath.Join(other, "keep-me"), []byte("precious"), 0o600)
	pgtest.Chown(t, other)
	res := r.run(t, "restore", "--pgdata", other)
	if res.code == 0 || !strings.Contains(res.stderr, "not empty") {
		t.Fatalf("restore into a non-empty dir: exit %d %q", res.code, res.stderr)
	}
	if data, _ := os.ReadFile(filepath.Join(other, "keep-me")); string(data) != "precious" {
		t.Fatal("refused restore touched the directory")
	}
	res = r.run(t, "restore", "--pgdata", other, "--target-time", "yesterday")
	if res.code != 2 || !strings.Contains(res.stderr, "target time") {
		t.Fatalf("bad target time: exit %d %q", res.code, res.stderr)
	}
}

// snapshot lists names, sizes and mtimes under dir.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !strings.Contains(p, "pg_stat_tmp") && !strings.Contains(p, "pg_wal") {
			lines = append(lines, fmt.Sprintf("%s %d %d", p, fi.Size(), fi.ModTime().UnixNano()))
		}
		return nil
	})
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// TestBackupFaults: kill -9 mid-backup, PostgreSQL stopped mid-backup,
// damaged objects, wrong key, missing WAL. Each gives a clear error, and
// the earlier backup still restores.
func TestBackupFaults(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs", encrypted: true})
	primary, good := seeded(t, r)
	conn := primary.Conn(t)
	// Enough data that a backup takes a moment to kill.
	primary.Exec(t, conn, "CREATE TABLE bulk AS SELECT g AS id, repeat(md5(g::text), 8) AS h FROM generate_series(1, 1500000) g")

	t.Run("kill -9 mid-backup", func(t *testing.T) {
		// Archiving is held off, so the backup cannot finish (it waits for
		// its last segment): the kill lands while it is incomplete however
		// fast it copies. Its packs are written by then.
		primary.Exec(t, conn, "ALTER SYSTEM SET archive_command = 'false'")
		primary.Exec(t, conn, "SELECT pg_reload_conf()")
		defer func() {
			primary.Exec(t, conn, "ALTER SYSTEM RESET archive_command")
			primary.Exec(t, conn, "SELECT pg_reload_conf()")
		}()
		cmd := pgkeepCommand(t, backupEnv(r, primary), "backup")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitNewPack(t, r, good)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		rows := listBackups(t, r)
		complete := 0
		for _, b := range rows {
			if b.Status == "complete" {
				complete++
				if b.ID != good {
					t.Fatalf("killed backup listed as complete: %+v", rows)
				}
			}
		}
		if complete != 1 || len(rows) != 2 {
			t.Fatalf("after kill: %+v", rows)
		}
		// A killed backup's heartbeat keeps it "running" for 20 s.
		ageDebris(t, r)
		dry := r.run(t, "delete", "--retain-full", "1", "--debris-min-age", "0s", "--dry-run")
		if dry.code != 0 || !strings.Contains(dry.stdout, "would delete incomplete backup") {
			t.Fatalf("dry run: %q %q", dry.stdout, dry.stderr)
		}
		if got := listBackups(t, r); len(got) != 2 {
			t.Fatal("--dry-run deleted something")
		}
		del := r.run(t, "delete", "--retain-full", "1", "--debris-min-age", "0s")
		// The real run adds the repository's pack summary on stderr
		// (repacks run only then).
		if del.code != 0 || strings.ReplaceAll(dry.stdout, "would delete", "deleted") != del.stdout || !strings.Contains(del.stderr, "named by kept backups") {
			t.Fatalf("delete did not do what --dry-run said:\n%s\nvs\n%s", dry.stdout, del.stdout)
		}
		if rows := listBackups(t, r); len(rows) != 1 || rows[0].ID != good {
			t.Fatalf("after delete: %+v", rows)
		}
	})

	t.Run("PostgreSQL stopped mid-backup", func(t *testing.T) {
		done := make(chan result, 1)
		go func() { done <- runPgkeep(t, backupEnv(r, primary), "", "backup") }()
		// Stopped between pg_backup_start and pg_backup_stop, while files
		// are still being read.
		waitBackupStarted(t, conn)
		pgtest.Run(t, nil, "pg_ctl", "-D", primary.DataDir, "-m", "immediate", "stop")
		res := <-done
		if res.code == 0 || strings.Count(strings.TrimSpace(res.stderr), "\n") > 0 && !strings.Contains(res.stderr, "pgkeep: backup") {
			t.Fatalf("backup with PostgreSQL stopped: exit %d %q", res.code, res.stderr)
		}
		if !strings.Contains(res.stderr, "pgkeep: backup") {
			t.Fatalf("no clear error: %q", res.stderr)
		}
		if rows := listBackups(t, r); len(rows) < 1 || rows[0].ID != good || countComplete(rows) != 1 {
			t.Fatalf("after failed backup: %+v", rows)
		}
		primary.Start(t)
	})

	t.Run("archive_command failing", func(t *testing.T) {
		c := primary.Conn(t)
		primary.Exec(t, c, "ALTER SYSTEM SET archive_command = 'false'")
		primary.Exec(t, c, "SELECT pg_reload_conf()")
		defer func() {
			primary.Exec(t, c, "ALTER SYSTEM RESET archive_command")
			primary.Exec(t, c, "SELECT pg_reload_conf()")
		}()
		res := runPgkeep(t, backupEnv(r, primary), "", "backup", "--wal-timeout", "8s")
		lines := strings.Split(strings.TrimSpace(res.stderr), "\n")
		last := lines[len(lines)-1]
		if res.code == 0 || !strings.HasPrefix(last, "pgkeep: backup: WAL segment") ||
			!strings.Contains(last, "was not archived within 8s: PostgreSQL's archiver is failing") ||
			!strings.Contains(last, "the server log has archive_command's error") {
			t.Fatalf("backup with archiving broken: exit %d, last line %q", res.code, last)
		}
		if !strings.Contains(res.stderr, `level=WARN msg="PostgreSQL's archiver is failing; still waiting`) {
			t.Fatalf("no warning while waiting: %q", res.stderr)
		}
		if rows := listBackups(t, r); countComplete(rows) != 1 || rows[0].ID != good {
			t.Fatalf("after the backup that could not get its WAL: %+v", rows)
		}
	})

	t.Run("good backup still restores", func(t *testing.T) {
		c := restoreAndStart(t, r, "--backup", good, "--target", "immediate", "--target-action", "promote")
		waitRecoveryDone(t, c, false)
		if got := batches(t, c); got != "1 rows=500" {
			t.Fatalf("earlier backup after faults: %s", got)
		}
	})

	t.Run("wrong identity", func(t *testing.T) {
		wrong := filepath.Join(r.dir, "wrong-id.txt")
		r.mustRun(t, "keygen", "--output", wrong)
		dir := pgtest.MkdirFor(t, filepath.Join(pgtest.TempDir(t), "x"))
		res := runPgkeep(t, append(append([]string{}, r.env...), "PGKEEP_ENCRYPTION_IDENTITY_FILE="+wrong), "", "restore", "--pgdata", dir, "--backup", good)
		if res.code == 0 || !strings.Contains(res.stderr, "wrong key") {
			t.Fatalf("wrong key: exit %d %q", res.code, res.stderr)
		}
	})

	t.Run("missing WAL", func(t *testing.T) {
		out := r.run(t, "backup", "show", good, "--json")
		startWAL := regexp.MustCompile(`"start_wal": "([0-9A-F]{24})"`).FindStringSubmatch(out.stdout)
		if startWAL == nil {
			t.Fatalf("show: %s", out.stdout)
		}
		obj := filepath.Join(r.repoDir, "wal", startWAL[1][:16], startWAL[1])
		hidden := obj + ".hidden"
		if err := os.Rename(obj, hidden); err != nil {
			t.Fatal(err)
		}
		defer os.Rename(hidden, obj)
		v := r.run(t, "verify", good)
		if v.code == 0 || !strings.Contains(v.stdout, "WAL gap") || !strings.Contains(v.stdout, startWAL[1]) {
			t.Fatalf("verify with a missing segment: exit %d %q", v.code, v.stdout)
		}
		dir := pgtest.MkdirFor(t, filepath.Join(pgtest.TempDir(t), "x"))
		res := r.run(t, "restore", "--pgdata", dir, "--backup", good)
		if res.code == 0 || !strings.Contains(res.stderr, startWAL[1]) {
			t.Fatalf("restore with a missing segment: exit %d %q", res.code, res.stderr)
		}
	})

	t.Run("corrupt pack and truncated manifest", func(t *testing.T) {
		packs, _ := filepath.Glob(filepath.Join(r.repoDir, "backups", good, "pack", "*"))
		if len(packs) == 0 {
			t.Fatal("no packs")
		}
		data, _ := os.ReadFile(packs[0])
		orig := append([]byte(nil), data...)
		data[len(data)/2] ^= 0xff
		os.WriteFile(packs[0], data, 0o640)
		v := r.run(t, "verify", good)
		fileRE := regexp.MustCompile(`(base|global|pg_[a-z_]+)/[^ :]*: block at \d+`)
		if v.code == 0 || !fileRE.MatchString(v.stdout) {
			t.Fatalf("verify of a corrupt pack: exit %d %q", v.code, v.stdout)
		}
		dir := pgtest.MkdirFor(t, filepath.Join(pgtest.TempDir(t), "x"))
		res := r.run(t, "restore", "--pgdata", dir, "--backup", good)
		if res.code == 0 || !fileRE.MatchString(res.stderr) || !strings.Contains(res.stderr, "corrupt") {
			t.Fatalf("restore of a corrupt pack: exit %d %q", res.code, res.stderr)
		}
		os.WriteFile(packs[0], orig, 0o640)

		man := filepath.Join(r.repoDir, "backups", good, "manifest")
		mdata, _ := os.ReadFile(man)
		os.WriteFile(man, mdata[:len(mdata)/2], 0o640)
		v = r.run(t, "verify", good)
		if v.code == 0 || !strings.Contains(v.stdout, "manifest") {
			t.Fatalf("verify of a truncated manifest: %q", v.stdout)
		}
		res = r.run(t, "restore", "--pgdata", dir, "--backup", good, "--force")
		if res.code == 0 || !strings.Contains(res.stderr, "manifest") || !strings.Contains(res.stderr, "truncated") {
			t.Fatalf("restore with a truncated manifest: exit %d %q", res.code, res.stderr)
		}
		os.WriteFile(man, mdata, 0o640)
		if v := r.run(t, "verify", good); v.code != 0 {
			t.Fatalf("verify after repair: %s", v.stdout)
		}
	})
	_ = context.Background
}

func countComplete(rows []backupRow) int {
	n := 0
	for _, r := range rows {
		if r.Status == "complete" {
			n++
		}
	}
	return n
}

// waitNewPack waits until a backup other than existing has written a pack.
// waitBackupStarted waits until a session has run pg_backup_start: its
// connection stays open, idle, with that as its last query.
func waitBackupStarted(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	pgtest.WaitFor(t, time.Minute, "pg_backup_start", func() (bool, error) {
		var n int
		err := conn.QueryRow(context.Background(),
			"SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_backup_start(%' AND pid <> pg_backend_pid()").Scan(&n)
		return n > 0, err
	})
}

func waitNewPack(t *testing.T, r *testRepo, existing string) {
	t.Helper()
	pgtest.WaitFor(t, time.Minute, "the backup to write data", func() (bool, error) {
		m, _ := filepath.Glob(filepath.Join(r.repoDir, "backups", "*", "pack", "*"))
		for _, p := range m {
			if !strings.Contains(p, "/"+existing+"/") {
				return true, nil
			}
		}
		return false, nil
	})
}

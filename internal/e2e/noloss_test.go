package e2e

// The data-loss cases of the hostile test (issue "No silent data loss"),
// each reproduced against real PostgreSQL 15 and a real repository.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/pgtest"
)

// pushIn runs wal-push for pg_wal/name in the fake data directory pgdata.
func pushIn(t *testing.T, env []string, pgdata, name string) result {
	t.Helper()
	return runPgkeep(t, env, pgdata, "wal-push", "pg_wal/"+name)
}

// A repository initialised without --pgdata is bound by its first push to
// that segment's system; another cluster's segments are refused, even
// under names the first cluster has not used yet (push-ahead used to store
// them, and a backup then committed with a foreign start segment).
func TestPushBindsSystemIdentifier(t *testing.T) {
	for _, kind := range []string{"fs", "s3"} {
		t.Run(kind, func(t *testing.T) {
			r := newRepo(t, repoOpts{kind: kind})
			a, b := walDir(t), walDir(t)
			segA := "000000010000000000000001"
			writeSegment(t, a, segA, randomSegment(t, segA, 16<<20))
			if res := pushIn(t, r.env, a, segA); res.code != 0 {
				t.Fatalf("first push: exit %d %s", res.code, res.stderr)
			}
			// Cluster B, further ahead, pushes a name A has not used.
			segB := "000000010000000000000005"
			data := make([]byte, 16<<20)
			stampSegmentHeader(t, data, segB, testSystemID+1)
			writeSegment(t, b, segB, data)
			res := pushIn(t, r.env, b, segB)
			if res.code == 0 || res.code >= 126 || !strings.Contains(res.stderr, "refusing to mix clusters") ||
				!strings.Contains(res.stderr, fmt.Sprint(testSystemID)) || strings.Count(strings.TrimSpace(res.stderr), "\n") != 0 {
				t.Fatalf("foreign system's push: exit %d %q", res.code, res.stderr)
			}
			if _, fres := fetchBytes(t, r, segB); fres.code != 1 {
				t.Fatalf("the foreign segment is in the repository (fetch exit %d)", fres.code)
			}
			// Also through push-ahead: B's backlog is not stored either.
			seg6 := "000000010000000000000006"
			stampSegmentHeader(t, data, seg6, testSystemID+1)
			writeSegment(t, b, seg6, data)
			os.WriteFile(filepath.Join(b, "pg_wal", "archive_status", seg6+".ready"), nil, 0o600)
			pushIn(t, r.env, b, segB)
			if _, fres := fetchBytes(t, r, seg6); fres.code != 1 {
				t.Fatalf("push-ahead stored a foreign segment (fetch exit %d)", fres.code)
			}
			// The bound cluster goes on archiving.
			seg2 := "000000010000000000000002"
			writeSegment(t, a, seg2, randomSegment(t, seg2, 16<<20))
			if res := pushIn(t, r.env, a, seg2); res.code != 0 {
				t.Fatalf("bound cluster's next push: exit %d %s", res.code, res.stderr)
			}
		})
	}
}

// A host configured with a valid age recipient the repository does not
// record cannot push: restore with the repository's identity would end
// recovery at its segment.
func TestPushRefusesForeignRecipient(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs", encrypted: true})
	other := filepath.Join(r.dir, "other.txt")
	rcp := strings.TrimSpace(r.mustRun(t, "keygen", "--output", other))
	cfg := filepath.Join(r.dir, "foreign.yml")
	os.WriteFile(cfg, []byte("repository: file://"+r.repoDir+"\nencryption:\n  recipients: ["+rcp+"]\n"), 0o644)
	pgdata := walDir(t)
	seg := "000000010000000000000001"
	writeSegment(t, pgdata, seg, randomSegment(t, seg, 16<<20))
	before := repoObjects(t, r.repoDir)
	res := pushIn(t, []string{"PGKEEP_CONFIG=" + cfg}, pgdata, seg)
	if res.code == 0 || res.code >= 126 || !strings.Contains(res.stderr, "does not accept") || strings.Contains(res.stderr, "AGE-SECRET") {
		t.Fatalf("foreign recipient: exit %d %q", res.code, res.stderr)
	}
	if after := repoObjects(t, r.repoDir); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Fatalf("a refused push changed the repository: %v -> %v", before, after)
	}
	// The right recipient pushes, and verify with the identity passes.
	if res := pushIn(t, r.env, pgdata, seg); res.code != 0 {
		t.Fatalf("push: %s", res.stderr)
	}
}

// Push-ahead records name the repository they were made for: pointing the
// config at a new repository (or re-initialising one) must not make
// PostgreSQL count segments as archived that the repository lacks.
func TestPushAheadRecordsNameTheRepository(t *testing.T) {
	r1 := newRepo(t, repoOpts{kind: "fs", extra: []string{"wal:", "  push_ahead: 8"}})
	r2 := newRepo(t, repoOpts{kind: "fs", extra: []string{"wal:", "  push_ahead: 8"}})
	pgdata := walDir(t)
	var segs []string
	for i := 1; i <= 5; i++ {
		seg := fmt.Sprintf("0000000100000000000000%02X", i)
		segs = append(segs, seg)
		writeSegment(t, pgdata, seg, randomSegment(t, seg, 16<<20))
		os.WriteFile(filepath.Join(pgdata, "pg_wal", "archive_status", seg+".ready"), nil, 0o600)
	}
	if res := pushIn(t, r1.env, pgdata, segs[0]); res.code != 0 {
		t.Fatalf("push with backlog: %s", res.stderr)
	}
	for _, s := range segs {
		if _, res := fetchBytes(t, r1, s); res.code != 0 {
			t.Fatalf("push-ahead did not store %s in the first repository", s)
		}
	}
	// PostgreSQL asks for segments 2..5 after the config moved to r2.
	for _, s := range segs[1:] {
		if res := pushIn(t, r2.env, pgdata, s); res.code != 0 {
			t.Fatalf("push %s to the new repository: %s", s, res.stderr)
		}
		if _, res := fetchBytes(t, r2, s); res.code != 0 {
			t.Fatalf("%s counted as archived but the new repository lacks it (fetch exit %d)", s, res.code)
		}
	}
}

// wal-push refuses what PostgreSQL never archives, before reading it.
func TestPushRefusesNonWAL(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs"})
	pgdata := walDir(t)
	wal := filepath.Join(pgdata, "pg_wal")

	// A FIFO: open(2) would block forever.
	fifo := "000000010000000000000009"
	if err := syscall.Mkfifo(filepath.Join(wal, fifo), 0o600); err != nil {
		t.Fatal(err)
	}
	pgtest.Chown(t, filepath.Join(wal, fifo))
	res := pushIn(t, r.env, pgdata, fifo)
	if res.code == 0 || !strings.Contains(res.stderr, "not a regular file") || res.elapsed > 10*time.Second {
		t.Fatalf("FIFO: exit %d after %s %q", res.code, res.elapsed, res.stderr)
	}
	// A 32 MiB "segment" of a 16 MiB cluster.
	big := "00000001000000000000000A"
	data := make([]byte, 32<<20)
	stampSegmentHeader(t, data[:16<<20], big, testSystemID)
	writeSegment(t, pgdata, big, data)
	if res := pushIn(t, r.env, pgdata, big); res.code == 0 || !strings.Contains(res.stderr, "segment size 16777216, the file has 33554432") {
		t.Fatalf("32 MiB segment: exit %d %q", res.code, res.stderr)
	}
	// An empty history file.
	writeSegment(t, pgdata, "00000002.history", nil)
	if res := pushIn(t, r.env, pgdata, "00000002.history"); res.code == 0 || !strings.Contains(res.stderr, "names no parent timeline") {
		t.Fatalf("empty history: exit %d %q", res.code, res.stderr)
	}
	// A symlink to a real segment.
	real := "00000001000000000000000B"
	writeSegment(t, pgdata, real, randomSegment(t, real, 16<<20))
	link := "00000001000000000000000C"
	os.Symlink(filepath.Join(wal, real), filepath.Join(wal, link))
	if res := pushIn(t, r.env, pgdata, link); res.code == 0 || !strings.Contains(res.stderr, "not a regular file") {
		t.Fatalf("symlink: exit %d %q", res.code, res.stderr)
	}
	for _, s := range []string{fifo, big, "00000002.history", link} {
		if _, res := fetchBytes(t, r, s); res.code != 1 {
			t.Fatalf("%s was stored (fetch exit %d)", s, res.code)
		}
	}
}

// --retain-days beyond any real policy used to overflow and delete every
// backup but the newest with their WAL; now it is refused.
func TestRetentionInputsBounded(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs"})
	c, _ := seeded(t, r)
	takeBackup(t, r, c)
	before := repoObjects(t, r.repoDir)
	for _, args := range [][]string{
		{"--retain-days", "106752"}, {"--retain-full", "-1"}, {"--retain-full", "1", "--debris-min-age", "-1s"},
	} {
		res := r.run(t, append([]string{"delete"}, args...)...)
		if res.code == 0 || strings.Count(strings.TrimSpace(res.stderr), "\n") != 0 {
			t.Fatalf("delete %v: exit %d %q", args, res.code, res.stderr)
		}
	}
	if after := repoObjects(t, r.repoDir); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Fatal("a refused delete changed the repository")
	}
	if n := len(listBackups(t, r)); n != 2 {
		t.Fatalf("%d backups left, want 2", n)
	}
}

// A tablespace location a running cluster uses is refused like a running
// data directory, with --delta and --force too: a same-host restore used
// to rewrite and remove files of the live cluster's tablespace.
func TestRestoreRefusesLiveTablespace(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs"})
	c := archivingCluster(t, r)
	spc := pgtest.MkdirFor(t, filepath.Join(pgtest.TempDir(t), "spc"))
	pgtest.Chown(t, spc)
	conn := c.Conn(t)
	c.Exec(t, conn, "CREATE TABLESPACE live LOCATION '"+spc+"'")
	c.Exec(t, conn, "CREATE TABLE precious TABLESPACE live AS SELECT g AS id FROM generate_series(1, 1000) g")
	c.Exec(t, conn, "CHECKPOINT")
	conn.Close(context.Background())
	takeBackup(t, r, c)
	before := snapshot(t, spc)

	for _, args := range [][]string{{}, {"--delta"}, {"--force"}, {"--delta", "--force"}} {
		dir := pgtest.MkdirFor(t, filepath.Join(pgtest.TempDir(t), "restored"))
		res := r.run(t, append([]string{"restore", "--pgdata", dir}, args...)...)
		if res.code == 0 || !strings.Contains(res.stderr, "in use by a running cluster") ||
			!strings.Contains(res.stderr, "--tablespace-map") || strings.Contains(res.stderr, "--delta or --force") {
			t.Fatalf("restore %v onto a live tablespace: exit %d %q", args, res.code, res.stderr)
		}
	}
	if after := snapshot(t, spc); after != before {
		t.Fatal("a refused restore changed the live cluster's tablespace")
	}
	// Relocated, the same backup restores.
	out := pgtest.MkdirFor(t, filepath.Join(pgtest.TempDir(t), "spc2"))
	pgtest.Chown(t, out)
	restored := restoreAndStart(t, r, "--tablespace-map", tablespaceOID(t, c)+"="+out, "--target", "immediate", "--target-action", "promote")
	waitRecoveryDone(t, restored, false)
	rc := restored.Conn(t)
	defer rc.Close(context.Background())
	var n int
	if err := rc.QueryRow(context.Background(), "SELECT count(*) FROM precious").Scan(&n); err != nil || n != 1000 {
		t.Fatalf("restored tablespace table: %d rows (%v)", n, err)
	}
	// The live cluster still has every row after a restart.
	c.Stop(t)
	c.Start(t)
	lc := c.Conn(t)
	defer lc.Close(context.Background())
	if err := lc.QueryRow(context.Background(), "SELECT count(*) FROM precious").Scan(&n); err != nil || n != 1000 {
		t.Fatalf("live cluster after restart: %d rows (%v)", n, err)
	}
}

func tablespaceOID(t *testing.T, c *pgtest.Cluster) string {
	t.Helper()
	conn := c.Conn(t)
	defer conn.Close(context.Background())
	var oid string
	if err := conn.QueryRow(context.Background(), "SELECT oid::text FROM pg_tablespace WHERE spcname = 'live'").Scan(&oid); err != nil {
		t.Fatal(err)
	}
	return oid
}

// postmasterPID reads the postmaster's PID from its data directory.
func postmasterPID(t *testing.T, c *pgtest.Cluster) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(c.DataDir, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	fmt.Sscanf(string(data), "%d", &pid)
	return pid
}

// After a failover, the old primary's full segment of the switch (pushed
// by its archive_command before pg_rewind, while the new primary has only
// archived <segment>.partial) holds WAL past the fork: it is refused, so a
// restore in that window never replays transactions lost in the failover.
func TestDivergedSegmentOfOldPrimaryRefused(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs"})
	primary := archivingCluster(t, r)
	conn := primary.Conn(t)
	primary.Exec(t, conn, "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)")
	insertBatch(t, conn, 1)
	takeBackup(t, r, primary)
	standby := streamingStandby(t, r, primary)
	insertBatch(t, conn, 2)
	waitArchived(t, primary, switchSegments(t, primary, 1, 0), time.Minute)
	waitReplayed(t, primary, standby)

	// The standby stops receiving; the primary commits batch 3 and dies.
	var sender int
	if err := conn.QueryRow(context.Background(), "SELECT pid FROM pg_stat_replication").Scan(&sender); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(sender, syscall.SIGSTOP)
	insertBatch(t, conn, 3)
	var seg string
	if err := conn.QueryRow(context.Background(), "SELECT pg_walfile_name(pg_current_wal_lsn())").Scan(&seg); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(postmasterPID(t, primary), syscall.SIGKILL)
	syscall.Kill(sender, syscall.SIGKILL)
	time.Sleep(500 * time.Millisecond)

	sconn := promote(t, standby)
	pgtest.WaitFor(t, time.Minute, "the new timeline's history file in the archive", func() (bool, error) {
		_, res := fetchBytes(t, r, "00000002.history")
		return res.code == 0, nil
	})

	// The old primary's archive_command runs on its leftover segment.
	res := runPgkeep(t, r.env, primary.DataDir, "wal-push", "pg_wal/"+seg)
	if res.code == 0 || res.code >= 126 || !strings.Contains(res.stderr, "diverged") || !strings.Contains(res.stderr, "timeline 2 forked from timeline 1") {
		t.Fatalf("diverged segment %s: exit %d %q", seg, res.code, res.stderr)
	}
	if _, res := fetchBytes(t, r, seg); res.code != 1 {
		t.Fatalf("the diverged segment is in the archive (fetch exit %d)", res.code)
	}

	// Restore to latest in that window: batch 3 never comes back.
	restored := restoreAndStart(t, r)
	waitRecoveryDone(t, restored, false)
	if got := batches(t, restored); got != "1,2 rows=1000" {
		t.Fatalf("restore in the failover window: %s, want 1,2 rows=1000 (batch 3 was lost in the failover)", got)
	}
	restored.Stop(t)

	// Once the new timeline archives that segment, recovery follows it.
	insertBatch(t, sconn, 4)
	var last string
	if err := sconn.QueryRow(context.Background(), "SELECT pg_walfile_name(pg_switch_wal())").Scan(&last); err != nil {
		t.Fatal(err)
	}
	waitArchived(t, standby, last, time.Minute)
	again := restoreAndStart(t, r)
	waitRecoveryDone(t, again, false)
	if got := batches(t, again); got != "1,2,4 rows=1500" {
		t.Fatalf("restore after the new timeline archived: %s, want 1,2,4 rows=1500", got)
	}
}

// backupProc starts pgkeep backup against c in the background.
func backupProc(t *testing.T, r *testRepo, c *pgtest.Cluster) (*os.File, func() result) {
	t.Helper()
	cmd := pgkeepCommand(t, backupEnv(r, c), "backup")
	errf, _ := os.CreateTemp(t.TempDir(), "stderr")
	cmd.Stderr = errf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	pidFile, _ := os.CreateTemp(t.TempDir(), "pid")
	fmt.Fprint(pidFile, cmd.Process.Pid)
	return pidFile, func() result {
		err := cmd.Wait()
		data, _ := os.ReadFile(errf.Name())
		res := result{stderr: string(data)}
		if err != nil {
			res.code = cmd.ProcessState.ExitCode()
			if res.code < 0 {
				res.code = 128 + int(cmd.ProcessState.Sys().(syscall.WaitStatus).Signal())
			}
		}
		return res
	}
}

// waitInWALWait waits until a backup has called pg_backup_stop and polls
// the archiver while it waits for its WAL.
func waitInWALWait(t *testing.T, c *pgtest.Cluster) {
	t.Helper()
	conn := c.Conn(t)
	defer conn.Close(context.Background())
	pgtest.WaitFor(t, 2*time.Minute, "the backup to wait for its WAL", func() (bool, error) {
		var n int
		err := conn.QueryRow(context.Background(),
			"SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_stat_archiver%' AND pid <> pg_backend_pid()").Scan(&n)
		return n > 0, err
	})
}

// A delete while a backup runs (here: waits for its WAL, writing nothing)
// never removes the backup's objects, whatever --debris-min-age says; and a
// backup that was frozen long enough to be taken for abandoned, and lost
// its packs, does not commit.
func TestDeleteDuringBackup(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs"})
	hold := filepath.Join(pgtest.TempDir(t), "hold")
	c := archivingCluster(t, r, fmt.Sprintf("archive_command = 'test ! -f %s && %s wal-push %%p'", hold, pgkeepBin(t)))
	conn := c.Conn(t)
	c.Exec(t, conn, "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)")
	insertBatch(t, conn, 1)
	first := takeBackup(t, r, c)
	second := takeBackup(t, r, c)
	release := func() {
		os.Remove(hold)
		insertBatch(t, conn, 99)
		c.Exec(t, conn, "DELETE FROM events WHERE batch = 99")
		c.Exec(t, conn, "SELECT pg_switch_wal()")
	}

	// Running: kept by a delete with --debris-min-age 0s.
	os.WriteFile(hold, nil, 0o644)
	insertBatch(t, conn, 2)
	_, wait := backupProc(t, r, c)
	waitInWALWait(t, c)
	packsBefore, _ := filepath.Glob(filepath.Join(r.repoDir, "backups", "*", "pack", "*"))
	del := r.run(t, "delete", "--retain-full", "1", "--debris-min-age", "0s")
	if del.code != 0 {
		t.Fatalf("delete: %s", del.stderr)
	}
	packsAfter, _ := filepath.Glob(filepath.Join(r.repoDir, "backups", "*", "pack", "*"))
	for _, p := range packsBefore {
		if !strings.Contains(p, "/"+first+"/") && !slicesContains(packsAfter, p) {
			t.Fatalf("delete removed %s of the running backup", p)
		}
	}
	release()
	if res := wait(); res.code != 0 {
		t.Fatalf("backup after a concurrent delete: exit %d %s", res.code, res.stderr)
	}
	rows := listBackups(t, r)
	if len(rows) != 2 || rows[0].ID != second || countComplete(rows) != 2 {
		t.Fatalf("backups after delete + backup: %+v (want %s and the new one)", rows, second)
	}
	restored := restoreAndStart(t, r, "--backup", rows[1].ID, "--target", "immediate", "--target-action", "promote")
	waitRecoveryDone(t, restored, false)
	if got := batches(t, restored); got != "1,2 rows=1000" {
		t.Fatalf("restored: %s", got)
	}

	// Frozen past the grace period: debris to a delete, and it must not
	// commit when it wakes up.
	os.WriteFile(hold, nil, 0o644)
	pidFile, wait2 := backupProc(t, r, c)
	waitInWALWait(t, c)
	var pid int
	data, _ := os.ReadFile(pidFile.Name())
	fmt.Sscan(string(data), &pid)
	syscall.Kill(pid, syscall.SIGSTOP)
	time.Sleep(22 * time.Second) // repo.RunningGrace (20s) and a margin
	if res := r.run(t, "delete", "--retain-full", "1", "--debris-min-age", "0s"); res.code != 0 {
		t.Fatalf("delete: %s", res.stderr)
	}
	release()
	syscall.Kill(pid, syscall.SIGCONT)
	res := wait2()
	if res.code == 0 || !strings.Contains(res.stderr, "not committed") {
		t.Fatalf("a backup whose objects were deleted: exit %d %q", res.code, res.stderr)
	}
	if rows := listBackups(t, r); countComplete(rows) != 1 {
		t.Fatalf("backups: %+v", rows)
	}
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// A symlinked postgresql.conf (and a symlinked directory) in the data
// directory is backed up as what it points to, with a warning: it used to
// be left out silently, and the restored cluster did not start. A target
// time after the newest archived WAL gets a warning before the restore.
func TestBackupFollowsSymlinksAndWarns(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs"})
	c := archivingCluster(t, r)
	conn := c.Conn(t)
	c.Exec(t, conn, "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)")
	insertBatch(t, conn, 1)
	conn.Close(context.Background())
	outside := pgtest.MkdirFor(t, filepath.Join(pgtest.TempDir(t), "etc"))
	conf := filepath.Join(c.DataDir, "postgresql.conf")
	moved := filepath.Join(outside, "postgresql.conf")
	if err := os.Rename(conf, moved); err != nil {
		t.Fatal(err)
	}
	os.Symlink(moved, conf)
	extra := pgtest.MkdirFor(t, filepath.Join(outside, "conf.d"))
	os.WriteFile(filepath.Join(extra, "note.conf"), []byte("# linked directory\n"), 0o600)
	os.Symlink(extra, filepath.Join(c.DataDir, "conf.d"))
	pgtest.Chown(t, outside)
	res := runPgkeep(t, backupEnv(r, c), "", "backup")
	if res.code != 0 || !strings.Contains(res.stderr, "is a symlink") || !strings.Contains(res.stderr, "postgresql.conf -> "+moved) {
		t.Fatalf("backup with a symlinked postgresql.conf: exit %d %q", res.code, res.stderr)
	}
	restored := restoreAndStart(t, r, "--target", "immediate", "--target-action", "promote")
	waitRecoveryDone(t, restored, false)
	if got := batches(t, restored); got != "1 rows=500" {
		t.Fatalf("restored: %s", got)
	}
	for _, p := range []string{"postgresql.conf", "conf.d/note.conf"} {
		fi, err := os.Lstat(filepath.Join(restored.DataDir, p))
		if err != nil || !fi.Mode().IsRegular() {
			t.Fatalf("restored %s: %v %v", p, fi, err)
		}
	}

	dir := pgtest.MkdirFor(t, filepath.Join(pgtest.TempDir(t), "future"))
	res = r.run(t, "restore", "--pgdata", dir, "--target-time", time.Now().Add(48*time.Hour).UTC().Format(time.RFC3339))
	if res.code != 0 || !strings.Contains(res.stderr, "target time is after the newest archived WAL") {
		t.Fatalf("restore to a time past the archive: exit %d %q", res.code, res.stderr)
	}
}

// ageDebris sets the files of every uncommitted backup of the fs
// repository r back by a minute: as if the killed backup's heartbeat had
// stopped long enough ago for delete to take it for abandoned.
func ageDebris(t *testing.T, r *testRepo) {
	t.Helper()
	dirs, _ := filepath.Glob(filepath.Join(r.repoDir, "backups", "*"))
	old := time.Now().Add(-time.Minute)
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "backup.json")); err == nil {
			continue
		}
		filepath.Walk(d, func(p string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() {
				os.Chtimes(p, old, old)
			}
			return nil
		})
	}
}

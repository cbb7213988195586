package e2e

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/pgtest"
	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
)

func repoInfo(t *testing.T, r *testRepo) repo.Info {
	t.Helper()
	out := r.mustRun(t, "info", "-o", "json")
	var inf repo.Info
	if err := json.Unmarshal([]byte(out), &inf); err != nil {
		t.Fatalf("info -o json: %v\n%s", err, out)
	}
	return inf
}

// TestInfoRecoveryWindow: the first point of info's recovery window is
// what restore can reach: a restore to it (as a time and as an LSN)
// succeeds and holds the backup's data but not what came after, one
// second or a few bytes before it is refused naming the window; its last
// point is the newest archived segment.
func TestInfoRecoveryWindow(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs", encrypted: true})
	primary := archivingCluster(t, r)
	conn := primary.Conn(t)
	primary.Exec(t, conn, "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)")
	insertBatch(t, conn, 1)
	id := takeBackup(t, r, primary)
	time.Sleep(50 * time.Millisecond)
	insertBatch(t, conn, 2)
	last := switchSegments(t, primary, 1, 0)
	waitArchived(t, primary, last, time.Minute)

	inf := repoInfo(t, r)
	w := inf.RecoveryWindow
	if w == nil {
		t.Fatalf("no recovery window: %+v", inf)
	}
	if w.FirstBackup != id || w.LastWAL != last || len(inf.Backups) != 1 || w.FirstLSN != inf.Backups[0].StopLSN {
		t.Fatalf("window %+v, backups %+v; want the window from backup %s to %s", w, inf.Backups, id, last)
	}
	if len(inf.Timelines) != 1 || inf.Timelines[0].LastWAL != last || inf.Timelines[0].GapCount != 0 || inf.Size.Total <= 0 {
		t.Errorf("timelines %+v, size %+v", inf.Timelines, inf.Size)
	}
	table := r.mustRun(t, "info")
	if !strings.Contains(table, "recovery window") || !strings.Contains(table, w.FirstLSN) || !strings.Contains(table, id) {
		t.Errorf("info table:\n%s", table)
	}

	first := w.FirstTime.UTC().Format(time.RFC3339Nano)
	restored := restoreAndStart(t, r, "--target-time", first, "--target-action", "promote", "--archive-mode", "off")
	waitRecoveryDone(t, restored, false)
	if got := batches(t, restored); got != "1 rows=500" {
		t.Errorf("restored to the window's first time: %s, want 1 rows=500", got)
	}
	restored.Stop(t)

	restored = restoreAndStart(t, r, "--target-lsn", w.FirstLSN, "--target-action", "promote", "--archive-mode", "off")
	waitRecoveryDone(t, restored, false)
	if got := batches(t, restored); !strings.HasPrefix(got, "1") {
		t.Errorf("restored to the window's first LSN: %s", got)
	}
	restored.Stop(t)

	lsn, err := pg.ParseLSN(w.FirstLSN)
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--target-time", w.FirstTime.Add(-time.Second).UTC().Format(time.RFC3339Nano)},
		{"--target-lsn", (lsn - 8).String()},
	} {
		dir := filepath.Join(pgtest.TempDir(t), "refused")
		pgtest.MkdirFor(t, dir)
		res := r.run(t, append([]string{"restore", "--pgdata", dir, "--archive-mode", "off"}, args...)...)
		if res.code == 0 || !strings.Contains(res.stderr, "before the recovery window") || !strings.Contains(res.stderr, w.FirstLSN) ||
			!strings.Contains(res.stderr, w.LastLSN) || strings.Count(strings.TrimSpace(res.stderr), "\n") > 0 {
			t.Errorf("restore %v before the window: exit %d, %s", args, res.code, res.stderr)
		}
	}
}

// TestBackupManagement: annotations are stored and shown, a kept backup and
// the WAL from its start survive the retention configured for after each
// backup (retention.full 1), delete --backup refuses a kept backup and
// removes an unkept one with the WAL below the oldest remaining backup,
// and delete prints totals, not one line per WAL file.
func TestBackupManagement(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs", extra: []string{"retention:", "  full: 1", "backup:", "  concurrency: 1"}})
	primary := archivingCluster(t, r)
	conn := primary.Conn(t)
	primary.Exec(t, conn, "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)")
	insertBatch(t, conn, 1)

	backup := func(args ...string) (string, string) {
		t.Helper()
		res := runPgkeep(t, backupEnv(r, primary), "", append([]string{"backup"}, args...)...)
		if res.code != 0 {
			t.Fatalf("backup %v: exit %d\n%s", args, res.code, res.stderr)
		}
		switchSegments(t, primary, 3, 100)
		return strings.TrimSpace(res.stdout), res.stderr
	}
	if res := runPgkeep(t, backupEnv(r, primary), "", "backup", "--annotation", "bad key=x"); res.code != 2 {
		t.Errorf("bad annotation key: exit %d, %s", res.code, res.stderr)
	}
	a, _ := backup("--annotation", "ticket=OPS-1", "--annotation", "reason=before migration")
	r.mustRun(t, "backup", "keep", a)
	b, errB := backup()
	if !strings.Contains(errB, "retention: kept backup "+a) || strings.Contains(errB, "deleted backup") {
		t.Errorf("retention after the second backup:\n%s", errB)
	}
	c, errC := backup()
	if !strings.Contains(errC, "retention: deleted backup "+b) || strings.Contains(errC, "deleted backup "+a) {
		t.Errorf("retention after the third backup:\n%s", errC)
	}

	inf := repoInfo(t, r)
	if len(inf.Backups) != 2 || inf.Backups[0].ID != a || inf.Backups[1].ID != c || !inf.Backups[0].Kept || inf.Backups[1].Kept ||
		inf.Backups[0].Annotations["ticket"] != "OPS-1" || inf.Backups[0].Annotations["reason"] != "before migration" {
		t.Fatalf("backups after retention: %+v", inf.Backups)
	}
	if inf.Timelines[0].FirstWAL != inf.Backups[0].StartWAL || inf.RecoveryWindow == nil || inf.RecoveryWindow.FirstBackup != a {
		t.Errorf("the kept backup's WAL: timelines %+v, window %+v", inf.Timelines, inf.RecoveryWindow)
	}
	list := r.mustRun(t, "backup", "list")
	if !strings.Contains(list, "complete, kept") || !strings.Contains(list, `ticket="OPS-1"`) {
		t.Errorf("backup list:\n%s", list)
	}
	var rows []struct {
		ID          string            `json:"id"`
		Kept        bool              `json:"kept"`
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal([]byte(r.mustRun(t, "backup", "list", "--json")), &rows); err != nil || len(rows) != 2 || !rows[0].Kept || rows[0].Annotations["ticket"] != "OPS-1" {
		t.Errorf("backup list --json: %+v, %v", rows, err)
	}
	if show := r.mustRun(t, "backup", "show", a); !strings.Contains(show, "kept:") || !strings.Contains(show, `reason="before migration"`) {
		t.Errorf("backup show:\n%s", show)
	}
	if res := r.run(t, "verify"); res.code != 0 {
		t.Fatalf("verify after retention (the kept backup's WAL must be continuous): %s%s", res.stdout, res.stderr)
	}

	if res := r.run(t, "delete", "--backup", a); res.code == 0 || !strings.Contains(res.stderr, "unkeep") {
		t.Errorf("delete of a kept backup: exit %d, %s", res.code, res.stderr)
	}
	r.mustRun(t, "backup", "unkeep", a)
	dry := r.mustRun(t, "delete", "--backup", a, "--dry-run")
	if !strings.Contains(dry, "would delete backup "+a) || !strings.Contains(dry, "would delete 1 backup(s)") || strings.Contains(dry, "wal/") ||
		strings.Count(dry, "\n") > 3 {
		t.Errorf("delete --dry-run:\n%s", dry)
	}
	del := r.mustRun(t, "delete", "--backup", a)
	if del != strings.ReplaceAll(dry, "would delete", "deleted") {
		t.Errorf("delete printed\n%s\nbut the dry run\n%s", del, dry)
	}
	inf = repoInfo(t, r)
	if len(inf.Backups) != 1 || inf.Backups[0].ID != c || inf.Timelines[0].FirstWAL != inf.Backups[0].StartWAL {
		t.Errorf("after delete --backup: backups %+v, timelines %+v", inf.Backups, inf.Timelines)
	}
	if res := r.run(t, "verify"); res.code != 0 {
		t.Fatalf("verify after delete --backup: %s%s", res.stdout, res.stderr)
	}
}

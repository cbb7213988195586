package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/pgtest"
)

// resumeSummary is what backup show --json says of a resumed backup.
type resumeSummary struct {
	incrSummary
	Resumed      []string `json:"resumed"`
	BytesResumed int64    `json:"bytes_resumed"`
}

// packBytes sums the sizes of the packs stored under backups/<id>/.
func packBytes(t *testing.T, r *testRepo, id string) (int64, int) {
	t.Helper()
	paths, _ := filepath.Glob(filepath.Join(r.repoDir, "backups", "*", "pack", "*"))
	var n int64
	var count int
	for _, p := range paths {
		owner := filepath.Base(filepath.Dir(filepath.Dir(p)))
		if owner != id {
			continue
		}
		if fi, err := os.Stat(p); err == nil {
			n += fi.Size()
			count++
		}
	}
	return n, count
}

// indexedPackBytes is packBytes of the packs whose index is stored too.
func indexedPackBytes(t *testing.T, r *testRepo, id string) (int64, int) {
	t.Helper()
	paths, _ := filepath.Glob(filepath.Join(r.repoDir, "backups", "*", "pack", "*"))
	var n int64
	var count int
	for _, p := range paths {
		owner := filepath.Base(filepath.Dir(filepath.Dir(p)))
		if id != "" && owner != id {
			continue
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(filepath.Dir(p)), "index", filepath.Base(p))); err != nil {
			continue
		}
		if fi, err := os.Stat(p); err == nil {
			n += fi.Size()
			count++
		}
	}
	return n, count
}

// TestIncrementalResumeAfterKill: a backup of ~300 MB of poorly
// compressible rows is killed with SIGKILL once a good part of its packs
// is stored; the next backup reuses those blocks (it stores far fewer
// bytes than a full does), restores to exactly the rows, and verifies;
// delete then removes the killed backup's debris but the packs the new
// backup names, and the new backup still verifies and restores (and the
// restore passes pg_visibility and pg_checksums).
func TestIncrementalResumeAfterKill(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs", encrypted: true})
	primary := archivingClusterWith(t, r, withChecksums)
	conn := primary.Conn(t)
	ctx := context.Background()
	primary.Exec(t, conn, "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)")
	// ~1 KB of md5 output a row, as bytea (hex decoded): zstd cannot shrink it.
	primary.Exec(t, conn, "CREATE TABLE rnd (id int PRIMARY KEY, b bytea) WITH (autovacuum_enabled = off)")
	primary.Exec(t, conn, "ALTER TABLE rnd ALTER b SET STORAGE PLAIN")
	primary.Exec(t, conn, `INSERT INTO rnd SELECT g, (SELECT decode(string_agg(md5(g::text || ':' || h::text), ''), 'hex') FROM generate_series(1, 60) h)
		FROM generate_series(1, 280000) g`)
	// Frozen, so reading the table later sets no hint bits: only the pages
	// the update below touches differ from what the killed backup read.
	primary.Exec(t, conn, "VACUUM FREEZE rnd")
	primary.Exec(t, conn, "CHECKPOINT")
	insertBatch(t, conn, 1)

	// Archiving is held off, so the killed backup cannot finish whatever
	// its speed (it would wait for its last segment).
	primary.Exec(t, conn, "ALTER SYSTEM SET archive_command = 'false'")
	primary.Exec(t, conn, "SELECT pg_reload_conf()")
	cmd := pgkeepCommand(t, backupEnv(r, primary), "backup")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// A pack's index is written just after the pack; a pack stored
	// without its index at the kill is not reused, like the packs in
	// flight (docs/backup.md).
	pgtest.WaitFor(t, 3*time.Minute, "the backup to store 100 MB of indexed packs", func() (bool, error) {
		n, _ := indexedPackBytes(t, r, "")
		return n >= 100<<20, nil
	})
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait() // reaped: its PID is gone
	primary.Exec(t, conn, "ALTER SYSTEM RESET archive_command")
	primary.Exec(t, conn, "SELECT pg_reload_conf()")
	dirs, _ := filepath.Glob(filepath.Join(r.repoDir, "backups", "*"))
	if len(dirs) != 1 {
		t.Fatalf("backups after the kill: %v", dirs)
	}
	killed := filepath.Base(dirs[0])
	killedBytes, killedPacks := indexedPackBytes(t, r, killed)
	allBytes, _ := packBytes(t, r, killed)

	// Changes after the kill: the pages they touch are stored anew.
	primary.Exec(t, conn, "UPDATE rnd SET b = decode(md5(id::text), 'hex') || b WHERE id % 20000 = 3")
	insertBatch(t, conn, 2)
	var wantRows, wantSum string
	if err := conn.QueryRow(ctx, "SELECT count(*)::text, md5(string_agg(md5(b), '' ORDER BY id)) FROM rnd").Scan(&wantRows, &wantSum); err != nil {
		t.Fatal(err)
	}

	// Right away: the killed backup's process is gone, so it is not
	// running whatever its heartbeat's age.
	res := runPgkeep(t, backupEnv(r, primary), "", "backup")
	if res.code != 0 {
		t.Fatalf("backup after the kill: exit %d\n%s", res.code, res.stderr)
	}
	if !strings.Contains(res.stderr, "bytes_reused") {
		t.Errorf("the backup's log does not say how many bytes it reused:\n%s", res.stderr)
	}
	var b resumeSummary
	if err := json.Unmarshal([]byte(r.mustRun(t, "backup", "show", strings.TrimSpace(res.stdout), "--json")), &b); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed backup stored %d bytes in %d packs with their index (%d in all); the next stored %d and reused %d of %d (data %d)",
		killedBytes, killedPacks, allBytes, b.StoredSize, b.BytesResumed, b.BytesRead, b.DataSize)
	if len(b.Resumed) != 1 || b.Resumed[0] != killed || b.BytesResumed < killedBytes*8/10 {
		t.Fatalf("backup after the kill: resumed %v, %d bytes; want %s's ~%d bytes", b.Resumed, b.BytesResumed, killed, killedBytes)
	}
	if res := r.run(t, "verify"); res.code != 0 {
		t.Fatalf("verify: %s%s", res.stdout, res.stderr)
	}

	// Retention: the killed backup is debris (once its heartbeat is as old
	// as delete wants: 20 s); what the new one names stays.
	ageDebris(t, r)
	if res := r.run(t, "delete", "--retain-full", "1", "--debris-min-age", "0s"); res.code != 0 {
		t.Fatalf("delete: %s%s", res.stdout, res.stderr)
	}
	rows := listBackups(t, r)
	if len(rows) != 1 || rows[0].ID != b.ID || rows[0].Status != "complete" {
		t.Fatalf("after delete: %+v", rows)
	}
	var left []string // objects: the fs store leaves empty directories
	filepath.Walk(filepath.Join(r.repoDir, "backups", killed), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			left = append(left, strings.TrimPrefix(p, r.repoDir+"/"))
		}
		return nil
	})
	for _, name := range left {
		if !strings.Contains(name, "/pack/") {
			t.Errorf("after delete the killed backup left %v; want only its packs the new backup names", left)
			break
		}
	}
	if len(left) == 0 {
		t.Error("after delete nothing is left of the killed backup: the new backup's reused packs are gone")
	}
	if res := r.run(t, "verify", b.ID); res.code != 0 {
		t.Fatalf("verify after delete: %s%s", res.stdout, res.stderr)
	}
	c := restoreAndStart(t, r, "--backup", b.ID, "--target", "immediate", "--target-action", "promote")
	waitRecoveryDone(t, c, false)
	cc := c.Conn(t)
	var gotRows, gotSum string
	if err := cc.QueryRow(ctx, "SELECT count(*)::text, md5(string_agg(md5(b), '' ORDER BY id)) FROM rnd").Scan(&gotRows, &gotSum); err != nil {
		t.Fatal(err)
	}
	cc.Close(ctx)
	got := batches(t, c)
	pageChecks(t, c)
	if gotRows != wantRows || gotSum != wantSum || !strings.HasPrefix(got, "1,2 ") {
		t.Errorf("restored rnd %s rows (md5 %s), events %s; want %s rows (md5 %s), batches 1,2", gotRows, gotSum, got, wantRows, wantSum)
	}

	// What a full stores of the same cluster, for comparison.
	fres := runPgkeep(t, backupEnv(r, primary), "", "backup", "--type", "full")
	if fres.code != 0 {
		t.Fatalf("full backup: exit %d\n%s", fres.code, fres.stderr)
	}
	full := showBackup(t, r, strings.TrimSpace(fres.stdout))
	t.Logf("a full of the same cluster stores %d bytes", full.StoredSize)
	if killedBytes*4 < full.StoredSize || b.StoredSize > full.StoredSize-killedBytes*8/10 {
		t.Errorf("the backup after the kill stored %d bytes; a full stores %d and the killed backup had stored %d", b.StoredSize, full.StoredSize, killedBytes)
	}
}

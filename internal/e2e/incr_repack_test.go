package e2e

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// packBytesOnDisk sums the packs of an fs repository (0 for S3) and
// counts its relocations.
func packBytesOnDisk(t *testing.T, r *testRepo) (n int64, moved int) {
	t.Helper()
	if r.repoDir == "" {
		return 0, 0
	}
	filepath.WalkDir(filepath.Join(r.repoDir, "backups"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		switch filepath.Base(filepath.Dir(p)) {
		case "pack":
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		case "moved":
			moved++
		}
		return nil
	})
	return n, moved
}

// TestIncrementalRepack: a full and incrementals that each rewrite another
// fifth of a table's pages; a retention deletes the oldest backups and repacks the
// full's packs, of which the kept backups name only a part (--repack-grace
// 0 removes the old packs in the same run): the repository shrinks, the
// newest and the oldest kept backup restore to exactly their rows, and
// verify passes; a backup and a delete after the repack work as before.
// Every restore passes pg_visibility and pg_checksums. On fs, and on the
// S3 server with encryption.
func TestIncrementalRepack(t *testing.T) {
	for _, kind := range []string{"fs", "s3"} {
		t.Run(kind, func(t *testing.T) { testIncrementalRepack(t, kind) })
	}
}

func testIncrementalRepack(t *testing.T, kind string) {
	r := newRepo(t, repoOpts{kind: kind, encrypted: kind == "s3"})
	primary := archivingClusterWith(t, r, withChecksums)
	conn := primary.Conn(t)
	primary.Exec(t, conn, "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)")
	primary.Exec(t, conn, "CREATE TABLE big (id int PRIMARY KEY, v int, pad text) WITH (autovacuum_enabled = off)")
	primary.Exec(t, conn, "INSERT INTO big SELECT g, 1, md5(g::text) || repeat('x', 200) FROM generate_series(1, 100000) g")
	primary.Exec(t, conn, "VACUUM FREEZE")
	primary.Exec(t, conn, "CHECKPOINT")
	insertBatch(t, conn, 1)
	time.Sleep(11 * time.Second) // untouched files: older than the full's start by the margin
	var ids, states []string
	snap := func() {
		t.Helper()
		ids = append(ids, takeBackup(t, r, primary))
		states = append(states, incrState(t, primary))
	}
	snap()
	for k := range 5 {
		// A fifth of big gets new row versions (and, VACUUM FULL on the
		// last, a new file): the full's blocks of it are dead for later backups.
		primary.Exec(t, conn, fmt.Sprintf("UPDATE big SET v = v + 1 WHERE id > %d AND id <= %d", k*20000, (k+1)*20000))
		if k == 4 {
			primary.Exec(t, conn, "VACUUM FULL big")
		}
		insertBatch(t, conn, k+2)
		primary.Exec(t, conn, "CHECKPOINT")
		snap()
		if s := showBackup(t, r, ids[len(ids)-1]); s.Type != "incr" {
			t.Fatalf("backup %d: %+v; want an incr", len(ids)-1, s)
		}
	}
	before, _ := packBytesOnDisk(t, r)
	out := r.mustRun(t, "delete", "--retain-full", "3", "--repack-grace", "0")
	after, moved := packBytesOnDisk(t, r)
	t.Logf("pack bytes before the delete %d, after %d; %d relocations\n%s", before, after, moved, out)
	if !strings.Contains(out, "repacked ") || !strings.Contains(out, "removed ") || kind == "fs" && moved == 0 {
		t.Fatalf("delete did not repack (%d relocations):\n%s", moved, out)
	}
	if rows := listBackups(t, r); len(rows) != 3 || rows[0].ID != ids[3] || rows[2].ID != ids[5] {
		t.Fatalf("backups after the delete: %+v; want %v", rows, ids[3:])
	}
	if res := r.run(t, "verify"); res.code != 0 {
		t.Fatalf("verify after the repack: %s%s", res.stdout, res.stderr)
	}
	restoreAt := func(id string) string {
		t.Helper()
		c := restoreAndStart(t, r, "--backup", id, "--target", "immediate", "--target-action", "promote")
		waitRecoveryDone(t, c, false)
		got := incrState(t, c)
		pageChecks(t, c)
		return got
	}
	for _, i := range []int{5, 3} {
		if got := restoreAt(ids[i]); got != states[i] {
			t.Errorf("backup %d (%s) after the repack: restored %s, want %s", i, ids[i], got, states[i])
		}
	}
	// Life goes on: an incremental of the repacked chain, another delete.
	primary.Exec(t, conn, "UPDATE big SET v = v + 100 WHERE id <= 50")
	insertBatch(t, conn, 10)
	snap()
	r.mustRun(t, "delete", "--retain-full", "1", "--repack-grace", "0")
	if res := r.run(t, "verify"); res.code != 0 {
		t.Fatalf("verify after the second delete: %s%s", res.stdout, res.stderr)
	}
	if got := restoreAt(ids[6]); got != states[6] {
		t.Errorf("newest backup after the second delete: restored %s, want %s", got, states[6])
	}
}

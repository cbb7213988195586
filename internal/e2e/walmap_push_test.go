package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/storage/fs"
	"github.com/pgkeep/pgkeep/walmap"
)

// TestWALMapsAtPush: a real PostgreSQL archiving through pgkeep wal-push
// into an fs repository stores a block map beside every segment, each one
// exactly the map of the archived bytes and naming the table the workload
// wrote; verify is clean and names a damaged map; a restore to a point in
// time with the maps present (one of them damaged) gives the exact rows.
func TestWALMapsAtPush(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t, repoOpts{kind: "fs"})
	primary := archivingCluster(t, r)
	conn := primary.Conn(t)
	primary.Exec(t, conn, "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)")
	insertBatch(t, conn, 1)
	takeBackup(t, r, primary)
	insertBatch(t, conn, 2)
	time.Sleep(50 * time.Millisecond)
	var target string
	if err := conn.QueryRow(ctx, "SELECT now()::text").Scan(&target); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	insertBatch(t, conn, 3)
	var rel uint32
	if err := conn.QueryRow(ctx, "SELECT pg_relation_filenode('events')::int8").Scan(&rel); err != nil {
		t.Fatal(err)
	}
	last := switchSegments(t, primary, 4, 2000)
	waitArchived(t, primary, last, 3*time.Minute)

	b, err := fs.New(r.repoDir)
	if err != nil {
		t.Fatal(err)
	}
	rp, err := repo.Open(ctx, b, repo.OpenOptions{CompressionLevel: -1})
	if err != nil {
		t.Fatal(err)
	}
	segments, eventsMapped := 0, false
	var someMap string
	for _, f := range doneFiles(t, primary) {
		wf, err := pg.ParseWALFileName(f)
		if err != nil || wf.Kind != pg.KindSegment {
			continue
		}
		segments++
		m, err := rp.FetchWALMap(ctx, wf)
		if err != nil {
			t.Fatalf("%s: no block map: %v", f, err)
		}
		data, err := os.ReadFile(filepath.Join(primary.DataDir, "pg_wal", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := walmap.Verify(data, f, m); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, fk := range m.Forks {
			if fk.Rel == rel && len(fk.Blocks) > 0 {
				eventsMapped = true
			}
		}
		if f == last {
			someMap = repo.WALMapObjectName(wf)
		}
	}
	if segments < 5 || !eventsMapped || someMap == "" {
		t.Fatalf("%d segments, table events (filenode %d) mapped: %v, map of %s: %q", segments, rel, eventsMapped, last, someMap)
	}

	out := r.mustRun(t, "verify")
	if !strings.Contains(out, "all data readable") {
		t.Fatalf("verify: %s", out)
	}
	// Damage one map (its stored bytes, as bit rot would).
	p := filepath.Join(r.repoDir, filepath.FromSlash(someMap))
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)-5] ^= 0x55
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	res := r.run(t, "verify", "--no-cache")
	if res.code == 0 || !strings.Contains(res.stdout+res.stderr, someMap) {
		t.Fatalf("verify of a damaged map: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}

	restored := restoreAndStart(t, r, "--target-time", target, "--target-action", "promote", "--archive-mode", "off")
	waitRecoveryDone(t, restored, false)
	if got := batches(t, restored); got != "1,2 rows=1000" {
		t.Fatalf("restored with maps present: %s, want 1,2 rows=1000", got)
	}
}

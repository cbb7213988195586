package e2e

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestIncrementalStoresChangedPages: after ten rows of a 70 MB table are
// updated, an incremental stores about the changed pages (small blocks,
// manifest format 3), not the 4 MiB blocks around them, and restores to
// exactly the updated rows; verify passes; the restore passes
// pg_visibility and pg_checksums.
func TestIncrementalStoresChangedPages(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs"})
	primary := archivingClusterWith(t, r, withChecksums)
	conn := primary.Conn(t)
	ctx := context.Background()
	primary.Exec(t, conn, "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)")
	primary.Exec(t, conn, "CREATE TABLE wide (id int PRIMARY KEY, v int, pad text) WITH (autovacuum_enabled = off)")
	primary.Exec(t, conn, "INSERT INTO wide SELECT g, 0, md5(g::text) || md5((g+1)::text) || md5((g+2)::text) || md5((g+3)::text) FROM generate_series(1, 400000) g")
	primary.Exec(t, conn, "VACUUM FREEZE")
	primary.Exec(t, conn, "CHECKPOINT")
	insertBatch(t, conn, 1)
	time.Sleep(11 * time.Second) // untouched files: older than the full's start by the margin
	full := showBackup(t, r, takeBackup(t, r, primary))

	primary.Exec(t, conn, "UPDATE wide SET v = 1 WHERE id % 40000 = 7") // ten rows, spread over the table
	insertBatch(t, conn, 2)
	inc := showBackup(t, r, takeBackup(t, r, primary))
	t.Logf("full: %d bytes stored of %d; incremental after 10 updated rows: %d bytes stored, %d read", full.StoredSize, full.DataSize, inc.StoredSize, inc.BytesRead)
	if inc.Type != "incr" || inc.Reference != full.ID {
		t.Fatalf("second backup %+v; want an incr of %s", inc, full.ID)
	}
	// Whole 4 MiB blocks would re-store ~10 of the table's 17 blocks and
	// the index's: tens of MB. Small blocks: a few dozen 16-32 KiB blocks
	// and the manifest.
	if inc.StoredSize > 2<<20 || inc.StoredSize*8 > full.StoredSize {
		t.Errorf("incremental after ten updated rows stored %d bytes (full %d); want under 2 MiB", inc.StoredSize, full.StoredSize)
	}
	if res := r.run(t, "verify"); res.code != 0 {
		t.Fatalf("verify: %s%s", res.stdout, res.stderr)
	}
	c := restoreAndStart(t, r, "--backup", inc.ID, "--target", "immediate", "--target-action", "promote")
	waitRecoveryDone(t, c, false)
	cc := c.Conn(t)
	var n, sum int64
	if err := cc.QueryRow(ctx, "SELECT count(*), sum(v) FROM wide").Scan(&n, &sum); err != nil {
		t.Fatal(err)
	}
	cc.Close(ctx)
	got := batches(t, c)
	pageChecks(t, c)
	if n != 400000 || sum != 10 || !strings.HasPrefix(got, "1,2 ") {
		t.Errorf("restored %d rows of wide, sum(v) %d, events %s; want 400000, 10, batches 1,2", n, sum, got)
	}
}

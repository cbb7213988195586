package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/pgtest"
)

// incrSummary is what backup show --json says of a backup's change capture.
type incrSummary struct {
	ID         string `json:"id"`
	Type       string `json:"type"`
	Reference  string `json:"reference"`
	BytesRead  int64  `json:"bytes_read"`
	DataSize   int64  `json:"data_size"`
	StoredSize int64  `json:"stored_size"`
}

func showBackup(t *testing.T, r *testRepo, id string) incrSummary {
	t.Helper()
	var s incrSummary
	out := r.mustRun(t, "backup", "show", id, "--json")
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("backup show --json: %v\n%s", err, out)
	}
	return s
}

// incrState is what a restored cluster holds: the events batches, the sum
// of big, the tables that exist and db2's row count.
func incrState(t *testing.T, c *pgtest.Cluster) string {
	t.Helper()
	conn := c.Conn(t)
	defer conn.Close(context.Background())
	var sum int64
	var tables string
	if err := conn.QueryRow(context.Background(), `SELECT (SELECT coalesce(sum(v), 0) FROM big),
		(SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace)`).Scan(&sum, &tables); err != nil {
		t.Fatalf("query: %v\n%s", err, pgtest.Tail(c.Log(), 2000))
	}
	var dbs string
	conn.QueryRow(context.Background(), `SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database WHERE datname LIKE 'db%'`).Scan(&dbs)
	return fmt.Sprintf("events %s, big sum %d, tables %s, dbs %q", batches(t, c), sum, tables, dbs)
}

// TestIncrementalBackups: a full, then incrementals after updates, inserts,
// a new table and database, a dropped table, TRUNCATE and VACUUM FULL; each
// restores to exactly its rows; deleting the full and the first
// incremental leaves the later ones restorable and verifiable; a change
// hidden by an mtime set back fails incr (LSN cross-check) and is taken by
// checksum. Every restore passes pg_visibility and pg_checksums.
func TestIncrementalBackups(t *testing.T) {
	for _, kind := range []string{"fs", "s3"} {
		t.Run(kind, func(t *testing.T) {
			r := newRepo(t, repoOpts{kind: kind, encrypted: kind == "s3"})
			primary := archivingClusterWith(t, r, withChecksums)
			conn := primary.Conn(t)
			ctx := context.Background()
			primary.Exec(t, conn, "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)")
			primary.Exec(t, conn, "CREATE TABLE big (id int PRIMARY KEY, v int, pad text) WITH (autovacuum_enabled = off)")
			primary.Exec(t, conn, "INSERT INTO big SELECT g, 1, repeat('x', 200) FROM generate_series(1, 60000) g") // ~16 MB: several blocks
			primary.Exec(t, conn, "CREATE TABLE cold (id int, v int) WITH (autovacuum_enabled = off)")
			primary.Exec(t, conn, "INSERT INTO cold SELECT g, 0 FROM generate_series(1, 5000) g")
			primary.Exec(t, conn, "CREATE TABLE gone (id int)")
			primary.Exec(t, conn, "INSERT INTO gone SELECT generate_series(1, 1000)")
			primary.Exec(t, conn, "VACUUM FREEZE")
			primary.Exec(t, conn, "CHECKPOINT")
			insertBatch(t, conn, 1)
			// Files untouched from here on are older than the full's start
			// by more than the mtime margin: the incrementals take them unread.
			time.Sleep(11 * time.Second)
			type step struct{ id string }
			var steps []step
			snap := func(args ...string) incrSummary {
				t.Helper()
				res := runPgkeep(t, backupEnv(r, primary), "", append([]string{"backup"}, args...)...)
				if res.code != 0 {
					t.Fatalf("backup %v: exit %d\n%s", args, res.code, res.stderr)
				}
				id := strings.TrimSpace(res.stdout)
				steps = append(steps, step{id: id})
				return showBackup(t, r, id)
			}
			full := snap()
			if full.Type != "full" || full.Reference != "" {
				t.Fatalf("first backup: %+v; want a full", full)
			}

			// 1: updates spread over big, inserts.
			primary.Exec(t, conn, "UPDATE big SET v = v + 1 WHERE id % 500 = 0")
			insertBatch(t, conn, 2)
			inc1 := snap()
			if inc1.Type != "incr" || inc1.Reference != full.ID || inc1.BytesRead >= inc1.DataSize || inc1.StoredSize >= full.StoredSize {
				t.Errorf("first incremental: %+v (full %+v); want an incr of the full that read and stored less", inc1, full)
			}
			// 2: a new table, a new database.
			primary.Exec(t, conn, "CREATE TABLE fresh AS SELECT generate_series(1, 100) AS id")
			primary.Exec(t, conn, "CREATE DATABASE db2")
			insertBatch(t, conn, 3)
			inc2 := snap()
			// 3: a dropped table, TRUNCATE, VACUUM FULL (a new relfilenode).
			primary.Exec(t, conn, "DROP TABLE gone")
			primary.Exec(t, conn, "TRUNCATE fresh")
			primary.Exec(t, conn, "UPDATE big SET v = v + 10 WHERE id <= 100")
			primary.Exec(t, conn, "VACUUM FULL big")
			insertBatch(t, conn, 4)
			inc3 := snap()
			if inc3.Reference != inc2.ID || inc2.Reference != inc1.ID {
				t.Errorf("references: %s -> %s, %s -> %s; want each the previous", inc2.ID, inc2.Reference, inc3.ID, inc3.Reference)
			}

			wants := []string{
				`events 1 rows=500, big sum 60000, tables big,cold,events,gone, dbs ""`,
				`events 1,2 rows=1000, big sum 60120, tables big,cold,events,gone, dbs ""`,
				`events 1,2,3 rows=1500, big sum 60120, tables big,cold,events,fresh,gone, dbs "db2"`,
				`events 1,2,3,4 rows=2000, big sum 61120, tables big,cold,events,fresh, dbs "db2"`,
			}
			restoreAt := func(id string) string {
				t.Helper()
				c := restoreAndStart(t, r, "--backup", id, "--target", "immediate", "--target-action", "promote")
				waitRecoveryDone(t, c, false)
				got := incrState(t, c)
				pageChecks(t, c)
				return got
			}
			for i, s := range steps[1:] {
				if got := restoreAt(s.id); got != wants[i+1] {
					t.Errorf("backup %d (%s): restored %s, want %s", i+1, s.id, got, wants[i+1])
				}
			}

			// Delete the full and the first incremental: the others stay whole.
			r.mustRun(t, "delete", "--backup", full.ID)
			r.mustRun(t, "delete", "--backup", inc1.ID)
			if rows := listBackups(t, r); len(rows) != 2 || rows[0].ID != inc2.ID || rows[1].ID != inc3.ID {
				t.Errorf("backups after deleting two: %+v; want %s and %s only", rows, inc2.ID, inc3.ID)
			}
			if res := r.run(t, "verify"); res.code != 0 {
				t.Fatalf("verify after deleting the full and the first incremental: %s%s", res.stdout, res.stderr)
			}
			if got := restoreAt(inc2.ID); got != wants[2] {
				t.Errorf("backup 2 after deleting its chain: restored %s, want %s", got, wants[2])
			}

			// A change behind an mtime set back: incr's LSN cross-check
			// fails the backup, checksum takes the change.
			var rel string
			conn.QueryRow(ctx, "SELECT pg_relation_filepath('cold')").Scan(&rel)
			p := filepath.Join(primary.DataDir, rel)
			before, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			primary.Exec(t, conn, "UPDATE cold SET v = 7 WHERE id = 1")
			primary.Exec(t, conn, "CHECKPOINT")
			if err := os.Chtimes(p, before.ModTime(), before.ModTime()); err != nil {
				t.Fatal(err)
			}
			res := runPgkeep(t, backupEnv(r, primary), "", "backup", "--type", "incr")
			if res.code == 0 || !strings.Contains(res.stderr, rel) || !strings.Contains(res.stderr, "--type checksum") {
				t.Errorf("incr over a change whose mtime was set back: exit %d\n%s; want the LSN cross-check's error", res.code, res.stderr)
			}
			chk := snap("--type", "checksum")
			if chk.Type != "checksum" || chk.BytesRead != chk.DataSize {
				t.Errorf("checksum backup: %+v; want every byte read", chk)
			}
			c := restoreAndStart(t, r, "--backup", chk.ID, "--target", "immediate", "--target-action", "promote")
			waitRecoveryDone(t, c, false)
			cc := c.Conn(t)
			var v int
			cc.QueryRow(ctx, "SELECT v FROM cold WHERE id = 1").Scan(&v)
			cc.Close(ctx)
			pageChecks(t, c)
			if v != 7 {
				t.Errorf("checksum backup restored cold.v = %d for id 1, want 7", v)
			}
		})
	}
}

// TestIncrementalSurvivesDeleteOfItsReference: the reference of a running
// incremental is deleted while the incremental copies; the incremental
// still commits and restores to its rows, and verify passes.
func TestIncrementalSurvivesDeleteOfItsReference(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs"})
	primary := archivingCluster(t, r)
	conn := primary.Conn(t)
	primary.Exec(t, conn, "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)")
	primary.Exec(t, conn, "CREATE TABLE bulk AS SELECT g AS id, repeat(md5(g::text), 4) AS h FROM generate_series(1, 200000) g")
	insertBatch(t, conn, 1)
	primary.Exec(t, conn, "CHECKPOINT")
	time.Sleep(11 * time.Second) // bulk's files: older than the full's start by the margin
	ref := takeBackup(t, r, primary)
	insertBatch(t, conn, 2)

	// Archiving held off: the incremental copies, then waits for its WAL.
	primary.Exec(t, conn, "ALTER SYSTEM SET archive_command = 'false'")
	primary.Exec(t, conn, "SELECT pg_reload_conf()")
	cmd := pgkeepCommand(t, backupEnv(r, primary), "backup", "--wal-timeout", "3m")
	var stdout strings.Builder
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitNewPack(t, r, ref)
	del := r.run(t, "delete", "--backup", ref)
	primary.Exec(t, conn, "ALTER SYSTEM RESET archive_command")
	primary.Exec(t, conn, "SELECT pg_reload_conf()")
	if del.code != 0 {
		t.Fatalf("delete --backup %s while an incremental of it runs: exit %d\n%s", ref, del.code, del.stderr)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("incremental whose reference was deleted meanwhile: %v", err)
	}
	id := strings.TrimSpace(stdout.String())
	s := showBackup(t, r, id)
	if s.Type != "incr" || s.Reference != ref {
		t.Fatalf("backup %+v; want an incr of the deleted %s", s, ref)
	}
	if rows := listBackups(t, r); len(rows) != 1 || rows[0].ID != id {
		t.Errorf("backups: %+v; want %s only", rows, id)
	}
	if res := r.run(t, "verify"); res.code != 0 {
		t.Fatalf("verify: %s%s", res.stdout, res.stderr)
	}
	c := restoreAndStart(t, r, "--backup", id, "--target", "immediate", "--target-action", "promote")
	waitRecoveryDone(t, c, false)
	if got := batches(t, c); got != "1,2 rows=1000" {
		t.Errorf("restored %s, want 1,2 rows=1000", got)
	}
	c.Stop(t)
	// With the incremental deleted too, nothing references the full's packs.
	r.mustRun(t, "delete", "--backup", id)
	var left []string
	filepath.WalkDir(filepath.Join(r.repoDir, "backups"), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			left = append(left, p)
		}
		return nil
	})
	if len(left) != 0 {
		t.Errorf("objects left after deleting every backup: %v", left)
	}
}

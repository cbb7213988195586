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

	"github.com/jackc/pgx/v5"

	"github.com/pgkeep/pgkeep/internal/pgtest"
	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/storage/fs"
)

// mapShow is what backup show --json says of a backup's change capture.
type mapShow struct {
	incrSummary
	StartWAL string `json:"start_wal"`
	Capture  *struct {
		Mode         string `json:"mode"`
		Fallback     string `json:"fallback"`
		MapFrom      string `json:"map_from"`
		MapTo        string `json:"map_to"`
		MappedPages  int64  `json:"mapped_pages"`
		SplitBlocks  int64  `json:"split_blocks"`
		SampledPages int64  `json:"sampled_pages"`
		Audit        string `json:"audit"`
		AuditMisses  int64  `json:"audit_misses"`
	} `json:"capture"`
}

func showCapture(t *testing.T, r *testRepo, id string) mapShow {
	t.Helper()
	var s mapShow
	out := r.mustRun(t, "backup", "show", id, "--json")
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("backup show --json: %v\n%s", err, out)
	}
	if s.Capture == nil && s.Type != "full" {
		t.Fatalf("backup show %s: no change capture recorded\n%s", id, out)
	}
	if s.Capture == nil {
		s.Capture = &struct {
			Mode         string `json:"mode"`
			Fallback     string `json:"fallback"`
			MapFrom      string `json:"map_from"`
			MapTo        string `json:"map_to"`
			MappedPages  int64  `json:"mapped_pages"`
			SplitBlocks  int64  `json:"split_blocks"`
			SampledPages int64  `json:"sampled_pages"`
			Audit        string `json:"audit"`
			AuditMisses  int64  `json:"audit_misses"`
		}{}
	}
	return s
}

// clusterRows is every row of every public table of every database of c,
// as a count and an MD5 per table, plus an index-only probe per primary
// key (it reads the index, not the heap).
func clusterRows(t *testing.T, c *pgtest.Cluster) string {
	t.Helper()
	ctx := context.Background()
	var out []string
	forEachDatabase(t, c, func(db string, dc *pgx.Conn) {
		rows, err := dc.Query(ctx, "SELECT oid::regclass::text FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace ORDER BY 1")
		if err != nil {
			t.Fatal(err)
		}
		tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		for _, tb := range tables {
			var n int64
			var sum string
			if err := dc.QueryRow(ctx, fmt.Sprintf("SELECT count(*), coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM %s x", tb)).Scan(&n, &sum); err != nil {
				t.Fatalf("%s.%s: %v\n%s", db, tb, err, pgtest.Tail(c.Log(), 2000))
			}
			out = append(out, fmt.Sprintf("%s.%s %d %s", db, tb, n, sum))
		}
		// Index probes: counts through the primary key indexes must equal
		// the heap's.
		for _, tb := range []string{"big", "events"} {
			if db != "postgres" {
				break
			}
			var n int64
			tx, err := dc.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			tx.Exec(ctx, "SET LOCAL enable_seqscan = off")
			tx.Exec(ctx, "SET LOCAL enable_bitmapscan = off")
			if err := tx.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM %s WHERE id > 0", tb)).Scan(&n); err != nil {
				t.Fatalf("%s by index: %v", tb, err)
			}
			tx.Rollback(ctx)
			out = append(out, fmt.Sprintf("%s.%s by index %d", db, tb, n))
		}
	})
	return strings.Join(out, "\n")
}

// amcheck runs pg_amcheck over every database of c (heap and B-tree
// checks, every heap tuple looked up in its indexes).
func amcheck(t *testing.T, c *pgtest.Cluster) {
	t.Helper()
	out, err := pgtest.RunErr(t, nil, "pg_amcheck", "-h", "127.0.0.1", "-p", fmt.Sprint(c.Port), "-U", "postgres",
		"--all", "--install-missing", "--heapallindexed")
	if err != nil {
		t.Errorf("pg_amcheck: %v\n%s", err, out)
	}
}

// TestMapModeBackups: on PostgreSQL 15 with data checksums and WAL block
// maps written by wal-push, an incremental after updates spread over a
// table, inserts, a new table, TRUNCATE, VACUUM FULL, DROP TABLE, an
// extended and a truncated file runs in map mode, reads a fraction of
// the cluster and stores composite blocks; the next one, over CREATE DATABASE (both strategies), too;
// its restore equals a restore of a full backup of the same point, row
// for row, and passes pg_amcheck, pg_visibility (no page the visibility
// map calls all-visible or frozen that is not) and pg_checksums. With one segment's map deleted, the
// next backup falls back to hash mode, says why (log and backup show),
// and still restores exactly. A checksum backup then audits the maps
// against what changed and finds nothing missed. Maps rewritten without a
// changed table's blocks: the next backup's check B fails map mode over
// to hash mode (restores exactly), and a checksum backup reports the miss.
func TestMapModeBackups(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t, repoOpts{kind: "fs"})
	primary := archivingClusterWith(t, r, withChecksums)
	conn := primary.Conn(t)
	for _, sql := range []string{
		"CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)",
		"CREATE TABLE big (id int PRIMARY KEY, v int, pad text) WITH (autovacuum_enabled = off)",
		"INSERT INTO big SELECT g, 1, repeat('x', 200) FROM generate_series(1, 200000) g", // ~55 MB
		"CREATE TABLE vac (id int, v int)",
		"INSERT INTO vac SELECT g, g FROM generate_series(1, 20000) g",
		"CREATE TABLE trunc (id int)",
		"INSERT INTO trunc SELECT generate_series(1, 20000)",
		"CREATE TABLE gone (id int)",
		"INSERT INTO gone SELECT generate_series(1, 1000)",
		"CREATE TABLE grow (id int, pad text) WITH (autovacuum_enabled = off)",
		"INSERT INTO grow SELECT g, repeat('g', 100) FROM generate_series(1, 1000) g",
		"CREATE TABLE shrink (id int, pad text) WITH (autovacuum_enabled = off)",
		"INSERT INTO shrink SELECT g, repeat('s', 100) FROM generate_series(1, 20000) g",
		"VACUUM FREEZE",
		"CHECKPOINT",
	} {
		primary.Exec(t, conn, sql)
	}
	insertBatch(t, conn, 1)
	backup := func(args ...string) (mapShow, string) {
		t.Helper()
		res := runPgkeep(t, backupEnv(r, primary), "", append([]string{"backup"}, args...)...)
		if res.code != 0 {
			t.Fatalf("backup %v: exit %d\n%s", args, res.code, res.stderr)
		}
		return showCapture(t, r, strings.TrimSpace(res.stdout)), res.stderr
	}
	full0, _ := backup()
	if full0.Type != "full" {
		t.Fatalf("first backup: %+v", full0)
	}

	// 1: spread updates, inserts, a new table, TRUNCATE, VACUUM FULL, DROP
	// TABLE, an extended file, a file truncated by VACUUM.
	for _, sql := range []string{
		"UPDATE big SET v = v + 1 WHERE id % 1000 = 0",
		"CREATE TABLE fresh AS SELECT generate_series(1, 1000) AS id",
		"TRUNCATE trunc",
		"INSERT INTO trunc SELECT generate_series(1, 10)",
		"VACUUM FULL vac",
		"DROP TABLE gone",
		"INSERT INTO grow SELECT g, repeat('y', 100) FROM generate_series(1001, 6000) g",
		"DELETE FROM shrink WHERE id > 5000",
		"VACUUM shrink",
	} {
		primary.Exec(t, conn, sql)
	}
	insertBatch(t, conn, 2)
	inc1, log1 := backup()
	t.Logf("incremental 1: %s; read %d of %d bytes, stored %d", inc1.Capture.Mode, inc1.BytesRead, inc1.DataSize, inc1.StoredSize)
	for _, l := range strings.Split(log1, "\n") {
		if strings.Contains(l, "map mode:") {
			t.Logf("plan: %s", l) // what the cross-checks cost
		}
	}
	if inc1.Type != "incr" || inc1.Reference != full0.ID || inc1.Capture.Mode != "map" || inc1.Capture.Fallback != "" ||
		inc1.Capture.MapFrom == "" || inc1.Capture.MappedPages == 0 {
		t.Fatalf("incremental 1: %+v capture %+v; want map mode over the full\n%s", inc1, inc1.Capture, log1)
	}
	// The spread updates change a page here and there of big's blocks:
	// those are stored as composites (only the changed pages; the rest
	// slices of the full's copy), which the restores below rebuild.
	if inc1.Capture.SplitBlocks == 0 {
		t.Errorf("incremental 1: capture %+v; want composite blocks (split_blocks) for big's sparse updates", inc1.Capture)
	}
	if inc1.BytesRead*4 > inc1.DataSize {
		t.Errorf("incremental 1 in map mode read %d bytes of a %d-byte cluster; want under a quarter", inc1.BytesRead, inc1.DataSize)
	}
	if out := r.mustRun(t, "backup", "show", inc1.ID); !strings.Contains(out, "change capture:    map (WAL block maps "+inc1.Capture.MapFrom) {
		t.Errorf("backup show: %s; want the map mode line", out)
	}

	// 2: CREATE DATABASE both ways, a table in the new one, more updates.
	primary.Exec(t, conn, "CREATE DATABASE db2")
	primary.Exec(t, conn, "CREATE DATABASE db3 STRATEGY file_copy")
	c2, err := pgx.Connect(ctx, strings.Replace(primary.DSN(), "dbname=postgres", "dbname=db2", 1))
	if err != nil {
		t.Fatal(err)
	}
	primary.Exec(t, c2, "CREATE TABLE t2 AS SELECT generate_series(1, 5000) AS id")
	c2.Close(ctx)
	primary.Exec(t, conn, "UPDATE big SET v = v + 10 WHERE id <= 100")
	insertBatch(t, conn, 3)
	inc2, log2 := backup()
	t.Logf("incremental 2: %s; read %d of %d bytes", inc2.Capture.Mode, inc2.BytesRead, inc2.DataSize)
	if inc2.Reference != inc1.ID || inc2.Capture.Mode != "map" {
		t.Fatalf("incremental 2: %+v capture %+v; want map mode over incremental 1\n%s", inc2, inc2.Capture, log2)
	}
	fullB, _ := backup("--type", "full")

	restored := func(id string) (string, *pgtest.Cluster) {
		t.Helper()
		c := restoreAndStart(t, r, "--backup", id, "--target", "immediate", "--target-action", "promote")
		waitRecoveryDone(t, c, false)
		return clusterRows(t, c), c
	}
	got, c := restored(inc2.ID)
	amcheck(t, c)
	pageChecks(t, c)
	want, c := restored(fullB.ID)
	pageChecks(t, c)
	if got != want {
		t.Errorf("map-mode incremental restores to\n%s\nthe full of the same point to\n%s", got, want)
	}
	if !strings.Contains(got, "db2.t2 5000") || !strings.Contains(got, "postgres.grow 6000") || !strings.Contains(got, "postgres.shrink 5000") ||
		strings.Contains(got, "postgres.gone") || !strings.Contains(got, "postgres.trunc 10") {
		t.Errorf("restored rows lack the changes:\n%s", got)
	}

	// A fault: the map of the segment the full started in is deleted. The
	// next backup falls back to hash mode, says why, restores exactly.
	primary.Exec(t, conn, "UPDATE big SET v = v + 100 WHERE id % 777 = 0")
	insertBatch(t, conn, 4)
	wf, err := pg.ParseWALFileName(fullB.StartWAL)
	if err != nil {
		t.Fatal(err)
	}
	mapObj := filepath.Join(r.repoDir, filepath.FromSlash(repo.WALMapObjectName(wf)))
	if err := os.Remove(mapObj); err != nil {
		t.Fatalf("delete the map of %s: %v", wf.Name, err)
	}
	rollups, _ := filepath.Glob(filepath.Join(r.repoDir, "wal", "*", "*.maps"))
	for _, p := range rollups {
		os.Remove(p)
	}
	inc3, log3 := backup()
	if inc3.Reference != fullB.ID || inc3.Capture.Mode != "hash" || !strings.Contains(inc3.Capture.Fallback, wf.Name+" has no block map") {
		t.Fatalf("incremental over a segment without a map: %+v capture %+v; want hash mode naming %s", inc3, inc3.Capture, wf.Name)
	}
	if !strings.Contains(log3, "block maps not used") || !strings.Contains(log3, wf.Name) {
		t.Errorf("backup log does not say why map mode was not used:\n%s", log3)
	}
	if out := r.mustRun(t, "backup", "show", inc3.ID); !strings.Contains(out, "change capture:    hash (map mode not used: ") {
		t.Errorf("backup show: %s; want the fallback line", out)
	}
	t.Logf("incremental 3 (hash mode): read %d of %d bytes", inc3.BytesRead, inc3.DataSize)
	live := clusterRows(t, primary)
	time.Sleep(10 * time.Millisecond)
	got, c = restored(inc3.ID)
	pageChecks(t, c)
	if got != live {
		t.Errorf("hash-mode incremental restores to\n%s\nthe primary holds\n%s", got, live)
	}

	// A checksum backup reads everything and audits the maps of its range
	// against what changed: nothing missed.
	primary.Exec(t, conn, "UPDATE big SET v = v + 1000 WHERE id % 333 = 0")
	primary.Exec(t, conn, "CREATE TABLE late AS SELECT generate_series(1, 100) AS id")
	insertBatch(t, conn, 5)
	chk, logc := backup("--type", "checksum")
	if chk.Type != "checksum" || chk.Capture.Mode != "hash" || chk.Capture.Audit != "ok" || chk.Capture.AuditMisses != 0 {
		t.Errorf("checksum backup: %+v capture %+v; want the maps audited ok\n%s", chk, chk.Capture, logc)
	}
	if !strings.Contains(logc, "block map audit: every page that changed in the range is one the maps named") {
		t.Errorf("checksum backup log does not report the audit:\n%s", logc)
	}
	if out := r.mustRun(t, "backup", "show", chk.ID); !strings.Contains(out, "block map audit: ok") {
		t.Errorf("backup show: %s; want the audit line", out)
	}

	// A fault: maps that drop a change. A row of fresh (a few pages, all
	// sampled by check B) is updated and that table's blocks are removed
	// from every map since: the next backup's check B catches it and runs
	// in hash mode; a checksum backup over the range reports the miss.
	var freshPath string
	var freshNode uint32
	if err := conn.QueryRow(ctx, "SELECT pg_relation_filepath('fresh'), pg_relation_filenode('fresh')::int8").Scan(&freshPath, &freshNode); err != nil {
		t.Fatal(err)
	}
	primary.Exec(t, conn, "UPDATE fresh SET id = id + 1000000 WHERE id = 500")
	insertBatch(t, conn, 6)
	waitArchived(t, primary, switchSegments(t, primary, 1, 0), 2*time.Minute)
	dropFromMaps(t, r, chk.StartWAL, freshNode)
	inc4, log4 := backup()
	if inc4.Capture.Mode != "hash" || !strings.Contains(inc4.Capture.Fallback, "check B: ") || !strings.Contains(inc4.Capture.Fallback, freshPath) {
		t.Fatalf("incremental over maps missing a change: capture %+v; want check B to fail map mode naming %s\n%s", inc4.Capture, freshPath, log4)
	}
	if !strings.Contains(log4, "block maps failed a cross-check") {
		t.Errorf("backup log does not warn of the failed cross-check:\n%s", log4)
	}
	// Audited before anything reads fresh again: a read sets hint bits,
	// and with checksums their full-page images put fresh's pages into the
	// (intact) maps of later segments.
	aud, loga := backup("--type", "checksum", "--reference", chk.ID)
	if aud.Capture.Audit != "misses" || aud.Capture.AuditMisses == 0 {
		t.Errorf("checksum backup over maps missing a change: capture %+v; want the miss reported\n%s", aud.Capture, loga)
	}
	if !strings.Contains(loga, "block map audit: pages changed in the range that the maps do not name") || !strings.Contains(loga, freshPath) {
		t.Errorf("checksum backup log does not report the miss in %s:\n%s", freshPath, loga)
	}
	if out := r.mustRun(t, "backup", "show", aud.ID); !strings.Contains(out, "changed pages the maps missed, e.g. "+freshPath) {
		t.Errorf("backup show: %s; want the audit's misses", out)
	}
	live = clusterRows(t, primary)
	got, c = restored(inc4.ID)
	pageChecks(t, c)
	if got != live {
		t.Errorf("incremental after a failed check B restores to\n%s\nthe primary holds\n%s", got, live)
	}
}

// dropFromMaps rewrites every stored segment map from segment first on
// without relation node's blocks (and removes roll-ups), as a walker bug
// that missed them would have written them.
func dropFromMaps(t *testing.T, r *testRepo, first string, node uint32) {
	t.Helper()
	ctx := context.Background()
	b, err := fs.New(r.repoDir)
	if err != nil {
		t.Fatal(err)
	}
	rp, err := repo.Open(ctx, b, repo.OpenOptions{CompressionLevel: -1})
	if err != nil {
		t.Fatal(err)
	}
	paths, _ := filepath.Glob(filepath.Join(r.repoDir, "wal", "*", "*"))
	dropped := 0
	for _, p := range paths {
		name := filepath.Base(p)
		if strings.HasSuffix(name, ".maps") {
			os.Remove(p)
			continue
		}
		seg, ok := strings.CutSuffix(name, ".map")
		if !ok || seg < first {
			continue
		}
		wf, err := pg.ParseWALFileName(seg)
		if err != nil {
			continue
		}
		m, err := rp.FetchWALMap(ctx, wf)
		if err != nil {
			t.Fatal(err)
		}
		changed := false
		for i := range m.Forks {
			if m.Forks[i].Rel == node && len(m.Forks[i].Blocks) > 0 {
				m.Forks[i].Blocks, changed = nil, true
			}
		}
		if !changed {
			continue
		}
		dropped++
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		if err := rp.PutWALMap(ctx, wf, m); err != nil {
			t.Fatal(err)
		}
		pgtest.Chown(t, p) // pgkeep runs as postgres
		os.Chmod(p, 0o644)
	}
	if dropped == 0 {
		t.Fatalf("no map since %s names relation %d", first, node)
	}
}

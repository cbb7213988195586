package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/pgtest"
)

// The backups of testdata/repo-format4-c3da783.
const (
	format4Full = "20261202T032500Z-c5b9"
	format4Incr = "20261202T032502Z-10bd"
)

// TestReadsFormat4RepositoryOfC3da783 opens a repository written by the
// previous release (c3da783: repository format 4, manifests of format 4
// and 5 whose file maps are JSON, block maps beside the WAL segments) and
// checks that today's pgkeep, which writes binary maps (manifest format 6,
// repository format 5), still reads it: verify, the exact rows of both
// backups with and without WAL replay, a new backup on the restored
// cluster referencing the old incremental and its JSON maps, the deletion
// of the old full, and a restore of the new backup.
//
// The fixture holds a full of batch 1 (events 1..500, table big of 30000
// rows with v = 0) and an incremental taken in map mode whose file map
// holds a patch (depth 2) of the map of a deleted incremental
// (20261202T032501Z-bc29), itself a patch of the full's map; that deleted
// backup left its map and packs relocated by a repack (moved/, packs
// 5000xx), which is what made config.json format 4. After the incremental
// batch 2 was committed and its WAL archived. Made with c3da783's binary,
// as root, PostgreSQL 15 run by postgres (F=/tmp/fx4, owned by postgres;
// q is psql -h $F -p 56543 -U postgres -qAtX -c; pgkeep is c3da783's,
// built by `git worktree add /tmp/pk-c3da783 c3da783 && go build -o
// /tmp/pk-c3da783/pgkeep ./cmd/pgkeep`; PGKEEP_CONFIG=$F/pgkeep.yml holding
// "repository: file://$F/repo", PGKEEP_PGDATA=$F/pg,
// PGKEEP_POSTGRES_DSN="host=$F port=56543 user=postgres dbname=postgres"):
//
//	pgkeep repo init
//	initdb -D $F/pg --data-checksums -U postgres -A trust
//	postgresql.conf: port = 56543, listen_addresses = '', unix_socket_directories = '$F',
//	  shared_buffers = 16MB, max_wal_size = 1GB, checkpoint_timeout = 1h,
//	  archive_mode = on, archive_command = '/tmp/pk-c3da783/pgkeep wal-push %p'
//	pg_ctl -D $F/pg -l $F/pg.log -w start
//	q "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)"
//	q "INSERT INTO events (batch, payload) SELECT 1, md5(g::text) FROM generate_series(1, 500) g"
//	q "CREATE TABLE big (id int, v int) WITH (autovacuum_enabled = off)"
//	q "INSERT INTO big SELECT g, 0 FROM generate_series(1, 30000) g"
//	q "VACUUM FREEZE big"; q "CHECKPOINT"
//	pgkeep backup --type full                                     # 20261202T032500Z-c5b9, manifest format 4
//	q "CREATE TABLE filler AS SELECT g AS id, md5(g::text) || md5((g+1)::text) AS pad FROM generate_series(1, 20000) g"
//	q "UPDATE events SET payload = upper(payload) WHERE id % 50 = 0"
//	q "UPDATE big SET v = 1 WHERE id = 100"; q "CHECKPOINT"
//	pgkeep backup --type incr                                     # 20261202T032501Z-bc29, map mode, format 5
//	q "DROP TABLE filler"; q "UPDATE big SET v = 2 WHERE id = 29000"; q "CHECKPOINT"
//	pgkeep backup --type incr                                     # 20261202T032502Z-10bd, map mode, format 5
//	pgkeep delete --backup 20261202T032501Z-bc29 --repack-grace 0 # repacks 3 of its packs: format 4
//	q "INSERT INTO events (batch, payload) SELECT 2, md5(g::text) FROM generate_series(1, 500) g"
//	q "SELECT pg_switch_wal()"; wait for its .done; pg_ctl -D $F/pg -m fast -w stop
//	cp -a $F/repo internal/e2e/testdata/repo-format4-c3da783 (empty directories dropped)
func TestReadsFormat4RepositoryOfC3da783(t *testing.T) {
	r := fixtureRepo(t, "repo-format4-c3da783")

	// What the fixture is: if these fail, the fixture is not what this
	// test is about.
	if f := repoFormat(t, r); f != 4 {
		t.Fatalf("fixture config.json format %d, want 4", f)
	}
	if f := summaryFormat(t, r, format4Incr); f != 5 {
		t.Fatalf("fixture incremental's manifest format %d, want 5", f)
	}

	if res := r.run(t, "verify"); res.code != 0 {
		t.Fatalf("verify of the previous release's repository: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	rows := listBackups(t, r)
	if len(rows) != 2 || rows[0].ID != format4Full || rows[1].ID != format4Incr ||
		rows[0].Status != "complete" || rows[1].Status != "complete" {
		t.Fatalf("backups: %+v", rows)
	}
	if s := showBackup(t, r, format4Incr); s.Type != "incr" || s.Reference != "20261202T032501Z-bc29" {
		t.Fatalf("the old incremental: %+v", s)
	}

	// The fixture's cluster ran with the default max_wal_senders, more
	// than pgtest's, and a hot standby needs at least as many.
	fixtureConf := []string{"max_wal_senders = 10"}

	// Each backup's own blocks, without WAL replay that could repair them:
	// the incremental's come through a JSON patch of a deleted backup's
	// JSON patch of the full's JSON map, and relocated packs.
	const atIncr = "events 1 rows=500, upper 10, big sum 3, tables big,events"
	const atFull = "events 1 rows=500, upper 0, big sum 0, tables big,events"
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--target", "immediate", "--target-action", "promote"}, atIncr},
		{[]string{"--backup", format4Full, "--target", "immediate", "--target-action", "promote"}, atFull},
		{[]string{"--backup", format4Full}, "events 1,2 rows=1000, upper 10, big sum 3, tables big,events"},
	} {
		restored := restoreAndStartConf(t, r, fixtureConf, c.args...)
		waitRecoveryDone(t, restored, false)
		if got := format4State(t, restored); got != c.want {
			t.Errorf("restore %v: %s, want %s", c.args, got, c.want)
		}
		restored.Stop(t)
	}
	if t.Failed() {
		t.FailNow()
	}

	// The incremental to the latest WAL, archiving into the repository.
	c := restoreAndStartConf(t, r, []string{"archive_mode = on", "max_wal_senders = 10",
		fmt.Sprintf("archive_command = '%s wal-push %%p'", pgkeepBin(t))})
	waitRecoveryDone(t, c, false)
	if got := format4State(t, c); got != "events 1,2 rows=1000, upper 10, big sum 3, tables big,events" {
		t.Fatalf("restored to latest: %s", got)
	}
	conn := c.Conn(t)
	insertBatch(t, conn, 3)
	c.Exec(t, conn, "UPDATE big SET v = 4 WHERE id = 15000")
	conn.Close(context.Background())
	waitArchived(t, c, switchSegments(t, c, 1, 10), time.Minute)

	// A backup by today's pgkeep reuses the old incremental's blocks (the
	// restored cluster is on a new timeline in another directory, so it
	// is a checksum backup) and writes binary maps: manifest format 6,
	// repository format 5 (docs/format.md, "Binary file maps").
	fresh := takeBackup(t, r, c)
	s := showBackup(t, r, fresh)
	if (s.Type != "incr" && s.Type != "checksum") || s.Reference != format4Incr {
		t.Fatalf("the new backup does not reference the old incremental: %+v", s)
	}
	t.Logf("new backup %s: %s of %s, %d bytes stored of %d", fresh, s.Type, s.Reference, s.StoredSize, s.DataSize)
	if f := summaryFormat(t, r, fresh); f != 6 {
		t.Errorf("the new backup's manifest format %d, want 6", f)
	}
	if f := repoFormat(t, r); f != 5 {
		t.Errorf("config.json format %d after a backup with binary maps, want 5", f)
	}
	refs, err := os.ReadFile(filepath.Join(r.repoDir, "backups", fresh, "refs.json"))
	if err != nil {
		t.Fatalf("the new backup has no refs.json: %v", err)
	}
	var rf struct {
		Maps []string `json:"maps"`
	}
	if err := json.Unmarshal(refs, &rf); err != nil {
		t.Fatalf("refs.json: %v %s", err, refs)
	}
	if !slices.Contains(rf.Maps, "backups/"+format4Incr+"/map/000000") {
		t.Errorf("the new backup names none of the old incremental's JSON maps: %s", refs)
	}

	// Deleting the old full leaves the old incremental and the new
	// backup whole.
	if res := r.run(t, "delete", "--backup", format4Full); res.code != 0 {
		t.Fatalf("delete --backup %s: exit %d\n%s", format4Full, res.code, res.stderr)
	}
	if rows := listBackups(t, r); len(rows) != 2 || rows[0].ID != format4Incr || rows[1].ID != fresh {
		t.Fatalf("after deleting the full: %+v", rows)
	}
	if res := r.run(t, "verify"); res.code != 0 {
		t.Fatalf("verify after mixed writes: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	restored := restoreAndStartConf(t, r, fixtureConf, "--backup", format4Incr, "--target", "immediate", "--target-action", "promote")
	waitRecoveryDone(t, restored, false)
	if got := format4State(t, restored); got != atIncr {
		t.Errorf("the old incremental after its full was deleted: %s, want %s", got, atIncr)
	}
	restored.Stop(t)
	restored = restoreAndStartConf(t, r, fixtureConf, "--backup", fresh, "--target", "immediate", "--target-action", "promote")
	waitRecoveryDone(t, restored, false)
	if got, want := format4State(t, restored), "events 1,2,3 rows=1500, upper 10, big sum 7, tables big,events,filler"; got != want {
		t.Errorf("the new backup: %s, want %s", got, want)
	}
	restored.Stop(t)
}

// format4State is what a cluster of the format 4 fixture holds.
func format4State(t *testing.T, c *pgtest.Cluster) string {
	t.Helper()
	conn := c.Conn(t)
	defer conn.Close(context.Background())
	var upper, sum int64
	var tables string
	if err := conn.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM events WHERE payload = upper(payload) AND payload ~ '[A-F]'),
		(SELECT coalesce(sum(v), 0) FROM big),
		(SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace)`).Scan(&upper, &sum, &tables); err != nil {
		t.Fatalf("query: %v\n%s", err, pgtest.Tail(c.Log(), 2000))
	}
	return fmt.Sprintf("events %s, upper %d, big sum %d, tables %s", batches(t, c), upper, sum, tables)
}

// repoFormat is config.json's format.
func repoFormat(t *testing.T, r *testRepo) int {
	t.Helper()
	return jsonFormat(t, filepath.Join(r.repoDir, "config.json"))
}

// summaryFormat is the manifest format a backup's backup.json records.
func summaryFormat(t *testing.T, r *testRepo, id string) int {
	t.Helper()
	return jsonFormat(t, filepath.Join(r.repoDir, "backups", id, "backup.json"))
}

func jsonFormat(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Format int `json:"format"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return v.Format
}

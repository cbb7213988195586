package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgkeep/pgkeep/internal/pgtest"
)

// backupEnv is the repository environment plus a connection to c.
func backupEnv(r *testRepo, c *pgtest.Cluster) []string {
	return append(append([]string{}, r.env...),
		fmt.Sprintf("PGKEEP_POSTGRES_DSN=host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", c.Port),
		"PGKEEP_PGDATA="+c.DataDir)
}

// takeBackup runs pgkeep backup against c and returns the new backup's ID.
func takeBackup(t *testing.T, r *testRepo, c *pgtest.Cluster) string {
	t.Helper()
	res := runPgkeep(t, backupEnv(r, c), "", "backup")
	if res.code != 0 {
		t.Fatalf("backup: exit %d\n%s", res.code, res.stderr)
	}
	return strings.TrimSpace(res.stdout)
}

type backupRow struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	Role   string `json:"role"`
	Tl     uint32 `json:"timeline"`
}

func listBackups(t *testing.T, r *testRepo) []backupRow {
	t.Helper()
	res := r.run(t, "backup", "list", "--json")
	if res.code != 0 {
		t.Fatalf("backup list: %s", res.stderr)
	}
	var rows []backupRow
	if err := json.Unmarshal([]byte(res.stdout), &rows); err != nil {
		t.Fatalf("backup list --json: %v\n%s", err, res.stdout)
	}
	return rows
}

// restoreAndStart restores into a new directory with args, starts the
// cluster (archiving off, so restored clusters never write into the
// repository under test) and returns it.
func restoreAndStart(t *testing.T, r *testRepo, args ...string) *pgtest.Cluster {
	t.Helper()
	return restoreAndStartConf(t, r, nil, args...)
}

// restoreAndStartConf is restoreAndStart with extra postgresql.conf lines.
func restoreAndStartConf(t *testing.T, r *testRepo, conf []string, args ...string) *pgtest.Cluster {
	t.Helper()
	dir := filepath.Join(pgtest.TempDir(t), "restored")
	pgtest.MkdirFor(t, dir)
	res := r.run(t, append([]string{"restore", "--pgdata", dir}, args...)...)
	if res.code != 0 {
		t.Fatalf("restore %v: exit %d\n%s", args, res.code, res.stderr)
	}
	c := pgtest.Existing(t, dir, pgtest.Options{Env: r.env, Conf: append([]string{"archive_mode = off", "hot_standby = on"}, conf...)})
	c.Start(t)
	return c
}

// batches returns the distinct batch numbers in table events.
func batches(t *testing.T, c *pgtest.Cluster) string {
	t.Helper()
	conn := c.Conn(t)
	defer conn.Close(context.Background())
	var s string
	err := conn.QueryRow(context.Background(),
		"SELECT coalesce(string_agg(b::text, ',' ORDER BY b), '') || ' rows=' || (SELECT count(*) FROM events) FROM (SELECT DISTINCT batch b FROM events) x").Scan(&s)
	if err != nil {
		t.Fatalf("query events: %v\n%s", err, pgtest.Tail(c.Log(), 2000))
	}
	return s
}

func waitRecoveryDone(t *testing.T, c *pgtest.Cluster, wantPaused bool) {
	t.Helper()
	pgtest.WaitFor(t, 2*time.Minute, "recovery to reach its target", func() (bool, error) {
		conn, err := pgx.Connect(context.Background(), c.DSN())
		if err != nil {
			return false, err
		}
		defer conn.Close(context.Background())
		var inRecovery bool
		var state string
		err = conn.QueryRow(context.Background(),
			"SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE 'promoted' END").Scan(&inRecovery, &state)
		if err != nil {
			return false, err
		}
		if wantPaused {
			return inRecovery && state == "paused", nil
		}
		return !inRecovery, nil
	})
}

func insertBatch(t *testing.T, conn *pgx.Conn, batch int) {
	t.Helper()
	_, err := conn.Exec(context.Background(),
		"INSERT INTO events (batch, payload) SELECT $1, md5(g::text) FROM generate_series(1, 500) g", batch)
	if err != nil {
		t.Fatal(err)
	}
}

// TestPointInTimeRecovery restores one backup to five kinds of target and
// checks the exact rows present at each.
func TestPointInTimeRecovery(t *testing.T) {
	for _, kind := range []string{"fs", "s3"} {
		t.Run(kind, func(t *testing.T) {
			r := newRepo(t, repoOpts{kind: kind, encrypted: true})
			primary := archivingCluster(t, r)
			conn := primary.Conn(t)
			ctx := context.Background()
			primary.Exec(t, conn, "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)")
			insertBatch(t, conn, 1)
			id := takeBackup(t, r, primary)

			insertBatch(t, conn, 2)
			var t2 string
			conn.QueryRow(ctx, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')").Scan(&t2)
			time.Sleep(20 * time.Millisecond)
			insertBatch(t, conn, 3)
			var lsn3 string
			conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&lsn3)
			tx, _ := conn.Begin(ctx)
			var xid4 string
			tx.QueryRow(ctx, "SELECT txid_current()::text").Scan(&xid4)
			if _, err := tx.Exec(ctx, "INSERT INTO events (batch, payload) SELECT 4, 'x' FROM generate_series(1, 500)"); err != nil {
				t.Fatal(err)
			}
			tx.Commit(ctx)
			insertBatch(t, conn, 5)
			primary.Exec(t, conn, "SELECT pg_create_restore_point('before-batch-6')")
			insertBatch(t, conn, 6)
			last := switchSegments(t, primary, 1, 0)
			waitArchived(t, primary, last, time.Minute)

			cases := []struct {
				name   string
				args   []string
				want   string
				paused bool
			}{
				{"immediate", []string{"--target", "immediate", "--target-action", "promote"}, "1 rows=500", false},
				{"time", []string{"--target-time", t2, "--target-action", "promote"}, "1,2 rows=1000", false},
				{"lsn", []string{"--target-lsn", lsn3, "--target-action", "pause"}, "1,2,3 rows=1500", true},
				{"xid", []string{"--target-xid", xid4, "--target-action", "promote"}, "1,2,3,4 rows=2000", false},
				{"name", []string{"--target-name", "before-batch-6", "--target-action", "pause"}, "1,2,3,4,5 rows=2500", true},
				{"latest", []string{"--backup", id}, "1,2,3,4,5,6 rows=3000", false},
			}
			for _, c := range cases {
				restored := restoreAndStart(t, r, c.args...)
				waitRecoveryDone(t, restored, c.paused)
				if got := batches(t, restored); got != c.want {
					t.Errorf("%s: restored batches %s, want %s", c.name, got, c.want)
				}
				restored.Stop(t)
			}
			if res := r.run(t, "verify"); res.code != 0 {
				t.Fatalf("verify: %s%s", res.stdout, res.stderr)
			}
		})
	}
}

// nowUTC is the server's clock as an RFC 3339 string.
func nowUTC(t *testing.T, conn *pgx.Conn) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(context.Background(), "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')").Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

func currentLSN(t *testing.T, c *pgtest.Cluster, standby bool) string {
	t.Helper()
	conn := c.Conn(t)
	defer conn.Close(context.Background())
	q := "SELECT pg_current_wal_lsn()::text"
	if standby {
		q = "SELECT pg_last_wal_replay_lsn()::text"
	}
	var s string
	if err := conn.QueryRow(context.Background(), q).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// streamingStandby makes a hot standby of primary (pg_basebackup, streaming)
// whose archive_command pushes into r once it is promoted.
func streamingStandby(t *testing.T, r *testRepo, primary *pgtest.Cluster) *pgtest.Cluster {
	t.Helper()
	sdir := filepath.Join(pgtest.TempDir(t), "standby")
	pgtest.Run(t, nil, "pg_basebackup", "-h", "127.0.0.1", "-p", fmt.Sprint(primary.Port), "-U", "postgres",
		"-D", sdir, "-X", "stream", "-R", "--no-sync", "-c", "fast")
	standby := pgtest.Existing(t, sdir, pgtest.Options{Env: r.env, Conf: []string{
		"archive_mode = on",
		fmt.Sprintf("archive_command = '%s wal-push %%p'", pgkeepBin(t)),
		"hot_standby = on",
	}})
	standby.Start(t)
	return standby
}

// waitReplayed waits until standby has replayed primary's current WAL.
func waitReplayed(t *testing.T, primary, standby *pgtest.Cluster) {
	t.Helper()
	want := currentLSN(t, primary, false)
	pgtest.WaitFor(t, time.Minute, "standby to replay "+want, func() (bool, error) {
		return lsnGE(currentLSN(t, standby, true), want), nil
	})
}

// promote promotes standby, waits until it leaves recovery and returns a
// connection to it.
func promote(t *testing.T, standby *pgtest.Cluster) *pgx.Conn {
	t.Helper()
	conn := standby.Conn(t)
	standby.Exec(t, conn, "SELECT pg_promote()")
	pgtest.WaitFor(t, time.Minute, "promotion", func() (bool, error) {
		var rec bool
		err := conn.QueryRow(context.Background(), "SELECT pg_is_in_recovery()").Scan(&rec)
		return err == nil && !rec, err
	})
	return conn
}

// TestStandbyBackupAndTimelines takes a backup on a streaming standby,
// promotes the standby (timeline 2), and restores that timeline-1 backup to
// a moment on timeline 2 and to a moment before the switch.
func TestStandbyBackupAndTimelines(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs"})
	primary := archivingCluster(t, r)
	conn := primary.Conn(t)
	primary.Exec(t, conn, "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)")
	insertBatch(t, conn, 1)

	standby := streamingStandby(t, r, primary)
	waitReplayed(t, primary, standby)

	// Backup from the standby: its last segment is archived by the primary,
	// so keep the primary switching WAL until the backup is done.
	done := make(chan result, 1)
	go func() { done <- runPgkeep(t, backupEnv(r, standby), "", "backup") }()
	var res result
	deadline := time.After(3 * time.Minute)
wait:
	for {
		select {
		case res = <-done:
			break wait
		case <-time.After(500 * time.Millisecond):
			primary.Exec(t, conn, "SELECT pg_switch_wal()")
		case <-deadline:
			t.Fatal("backup from the standby did not finish")
		}
	}
	if res.code != 0 {
		t.Fatalf("backup on standby: %s", res.stderr)
	}
	id := strings.TrimSpace(res.stdout)
	rows := listBackups(t, r)
	if len(rows) != 1 || rows[0].ID != id || rows[0].Role != "standby" || rows[0].Tl != 1 {
		t.Fatalf("backup list: %+v", rows)
	}

	insertBatch(t, conn, 2)
	last := switchSegments(t, primary, 1, 0)
	waitArchived(t, primary, last, time.Minute)
	waitReplayed(t, primary, standby)
	beforeSwitch := nowUTC(t, conn)
	time.Sleep(50 * time.Millisecond)
	primary.Stop(t)

	sconn := promote(t, standby)
	time.Sleep(50 * time.Millisecond)
	insertBatch(t, sconn, 3)
	onTL2 := nowUTC(t, sconn)
	time.Sleep(50 * time.Millisecond)
	insertBatch(t, sconn, 4)
	last2 := switchSegments(t, standby, 1, 0)
	if !strings.HasPrefix(last2, "00000002") {
		t.Fatalf("new primary writes %s, expected timeline 2", last2)
	}
	waitArchived(t, standby, last2, time.Minute)

	restored := restoreAndStart(t, r, "--backup", id, "--target-time", onTL2, "--target-action", "promote")
	waitRecoveryDone(t, restored, false)
	if got := batches(t, restored); got != "1,2,3 rows=1500" {
		t.Fatalf("restore to a time on timeline 2: %s", got)
	}
	restored.Stop(t)
	restored = restoreAndStart(t, r, "--backup", id, "--target-time", beforeSwitch, "--target-action", "promote")
	waitRecoveryDone(t, restored, false)
	if got := batches(t, restored); got != "1,2 rows=1000" {
		t.Fatalf("restore to before the switch: %s", got)
	}
	if res := r.run(t, "verify"); res.code != 0 {
		t.Fatalf("verify across timelines: %s%s", res.stdout, res.stderr)
	}
}

func lsnGE(a, b string) bool {
	pa, pb := parseLSN(a), parseLSN(b)
	return pa >= pb
}

func parseLSN(s string) uint64 {
	var hi, lo uint64
	fmt.Sscanf(s, "%X/%X", &hi, &lo)
	return hi<<32 | lo
}

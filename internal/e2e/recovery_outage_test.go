package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgkeep/pgkeep/internal/pgtest"
	"github.com/pgkeep/pgkeep/internal/s3test"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/s3"
)

const allMarks = "1,2,3,4,5,6,7"

// markedArchive is a backup followed by seven WAL segments, each holding one
// committed marker row; lsns[i] is the end of marker i+1's commit.
type markedArchive struct {
	r       *testRepo
	primary *pgtest.Cluster
	lsns    []string
}

func newMarkedArchive(t *testing.T, srv *s3test.Server, extra ...string) *markedArchive {
	t.Helper()
	r := newRepo(t, repoOpts{kind: "s3", s3: srv, extra: extra})
	primary := archivingCluster(t, r)
	conn := primary.Conn(t)
	primary.Exec(t, conn, "CREATE TABLE marks (n int PRIMARY KEY)")
	takeBackup(t, r, primary)
	a := &markedArchive{r: r, primary: primary}
	var last string
	for i := 1; i <= 7; i++ {
		primary.Exec(t, conn, "INSERT INTO marks VALUES ($1)", i)
		var lsn string
		if err := conn.QueryRow(context.Background(), "SELECT pg_current_wal_lsn()::text").Scan(&lsn); err != nil {
			t.Fatal(err)
		}
		a.lsns = append(a.lsns, lsn)
		if err := conn.QueryRow(context.Background(), "SELECT pg_walfile_name(pg_switch_wal())").Scan(&last); err != nil {
			t.Fatal(err)
		}
	}
	waitArchived(t, primary, last, time.Minute)
	primary.Stop(t) // nothing else may reach the repository
	return a
}

// restoreTo restores into a new directory (no start); returns the cluster.
func (a *markedArchive) restoreTo(t *testing.T, env []string, args ...string) *pgtest.Cluster {
	t.Helper()
	dir := filepath.Join(pgtest.TempDir(t), "restored")
	pgtest.MkdirFor(t, dir)
	res := runPgkeep(t, env, "", append([]string{"restore", "--pgdata", dir}, args...)...)
	if res.code != 0 {
		t.Fatalf("restore %v: exit %d\n%s", args, res.code, res.stderr)
	}
	return pgtest.Existing(t, dir, pgtest.Options{Env: a.r.env, Conf: []string{"archive_mode = off", "hot_standby = on"}})
}

// marks lists the marker rows.
func marks(t *testing.T, c *pgtest.Cluster) string {
	t.Helper()
	conn := c.Conn(t)
	defer conn.Close(context.Background())
	var s string
	if err := conn.QueryRow(context.Background(), "SELECT coalesce(string_agg(n::text, ',' ORDER BY n), '') FROM marks").Scan(&s); err != nil {
		t.Fatalf("query marks: %v\n%s", err, pgtest.Tail(c.Log(), 2000))
	}
	return s
}

func clusterState(t *testing.T, c *pgtest.Cluster) string {
	t.Helper()
	out := pgtest.Run(t, nil, "pg_controldata", "-D", c.DataDir)
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, "Database cluster state:"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no cluster state in pg_controldata output:\n%s", out)
	return ""
}

// assertNotPromoted: no new timeline anywhere, pg_control still recovering.
func (a *markedArchive) assertNotPromoted(t *testing.T, srv *s3test.Server, c *pgtest.Cluster) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(c.DataDir, "pg_wal", "00000002.history")); err == nil {
		t.Fatalf("the cluster started timeline 2 (pg_wal/00000002.history)\n%s", pgtest.Tail(c.Log(), 3000))
	}
	if st := clusterState(t, c); st != "in archive recovery" && st != "shut down in recovery" {
		t.Fatalf("cluster state %q: left recovery\n%s", st, pgtest.Tail(c.Log(), 3000))
	}
	if srv != nil {
		b := srv.Backend(t, a.r.bucket, "cluster1", s3.Options{})
		if _, err := b.Stat(context.Background(), "wal/history/00000002.history"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("repository holds a timeline 2 history file (or cannot tell: %v)", err)
		}
	}
}

// startNoWait starts the postmaster without waiting for connections.
func startNoWait(t *testing.T, c *pgtest.Cluster) {
	t.Helper()
	pgtest.Run(t, c.Env, "pg_ctl", "-D", c.DataDir, "-l", c.LogFile, "-W", "start")
	t.Cleanup(func() { pgtest.RunErr(t, nil, "pg_ctl", "-D", c.DataDir, "-m", "immediate", "-w", "stop") })
}

func postmasterRunning(c *pgtest.Cluster) bool {
	_, err := os.Stat(filepath.Join(c.DataDir, "postmaster.pid"))
	return err == nil
}

// setConf rewrites postgresql.auto.conf without the lines starting with
// any of drop.
func setConf(t *testing.T, c *pgtest.Cluster, drop ...string) {
	t.Helper()
	p := filepath.Join(c.DataDir, "postgresql.auto.conf")
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, l := range strings.Split(string(data), "\n") {
		skip := false
		for _, d := range drop {
			skip = skip || strings.HasPrefix(strings.TrimSpace(l), d)
		}
		if !skip {
			kept = append(kept, l)
		}
	}
	if err := os.WriteFile(p, []byte(strings.Join(kept, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestRecoveryStorageOutage: storage goes away in the middle of a restore
// to latest. Recovery replays the first three marker segments (a target
// with action shutdown stops it there, so the outage lands at a known
// point), MinIO is stopped, recovery is started again without the target
// and the storage stays down past wal.fetch_retry_time: PostgreSQL must stop
// with FATAL instead of taking the later segments for "not archived" and
// promoting with 3 of the 7 rows. With MinIO back, a plain start completes
// recovery with all 7 rows.
func TestRecoveryStorageOutage(t *testing.T) {
	srv := s3test.Start(t)
	a := newMarkedArchive(t, srv, "wal:", "  prefetch: 0", "  fetch_retry_time: 3s")
	c := a.restoreTo(t, a.r.env, "--target-lsn", a.lsns[2], "--target-action", "shutdown")
	// PostgreSQL's own read-ahead would otherwise fetch (and keep in
	// pg_wal) the segments past the target too.
	c.Configure(t, "recovery_prefetch = off")
	startNoWait(t, c)
	pgtest.WaitFor(t, 2*time.Minute, "recovery to reach marker 3 and shut down", func() (bool, error) {
		return strings.Contains(c.Log(), "database system is shut down") && !postmasterRunning(c), nil
	})
	if st := clusterState(t, c); st != "shut down in recovery" {
		t.Fatalf("after the target: state %q\n%s", st, pgtest.Tail(c.Log(), 3000))
	}
	setConf(t, c, "recovery_target")

	srv.Stop(t)
	logStart := len(c.Log())
	start := time.Now()
	out, err := pgtest.RunErr(t, c.Env, "pg_ctl", "-D", c.DataDir, "-l", c.LogFile, "-w", "-t", "120", "start")
	took := time.Since(start)
	log := c.Log()[logStart:]
	if err == nil {
		t.Cleanup(func() { pgtest.RunErr(t, nil, "pg_ctl", "-D", c.DataDir, "-m", "fast", "-w", "stop") })
		waitRecoveryDone(t, c, false)
		t.Fatalf("PostgreSQL started with the storage down: recovery ended early with marks %s of %s\n%s\n%s",
			marks(t, c), allMarks, out, pgtest.Tail(log, 4000))
	}
	if !strings.Contains(log, "FATAL:  could not restore file") || !strings.Contains(log, "pgkeep: ") {
		t.Fatalf("no FATAL restore failure with pgkeep's cause in the log:\n%s", pgtest.Tail(log, 4000))
	}
	if took < 3*time.Second {
		t.Fatalf("gave up after %s, before wal.fetch_retry_time (3s)", took)
	}
	t.Logf("storage down: PostgreSQL stopped recovery after %s; log: %s", took.Round(time.Millisecond), lastLines(log, "pgkeep: ", 1))
	if postmasterRunning(c) {
		t.Fatal("postmaster still running after the FATAL")
	}
	srv.Restart(t)
	a.assertNotPromoted(t, srv, c)

	c.Start(t)
	waitRecoveryDone(t, c, false)
	if got := marks(t, c); got != allMarks {
		t.Fatalf("after the outage: marks %s, want %s", got, allMarks)
	}
}

// TestRecoveryShortOutage: storage down for about 2 s (plus MinIO's restart)
// when recovery starts, with fetch_retry_time 20s and the default prefetch:
// recovery rides it out and completes in one start with all rows.
func TestRecoveryShortOutage(t *testing.T) {
	srv := s3test.Start(t)
	a := newMarkedArchive(t, srv, "wal:", "  fetch_retry_time: 20s")
	c := a.restoreTo(t, a.r.env)
	srv.Stop(t)
	done := make(chan error, 1)
	go func() {
		out, err := pgtest.RunErr(t, c.Env, "pg_ctl", "-D", c.DataDir, "-l", c.LogFile, "-w", "-t", "120", "start")
		if err != nil {
			err = fmt.Errorf("%v: %s", err, out)
		}
		done <- err
	}()
	time.Sleep(2 * time.Second)
	srv.Restart(t)
	if err := <-done; err != nil {
		t.Fatalf("pg_ctl start across a 2s outage: %v\n%s", err, pgtest.Tail(c.Log(), 4000))
	}
	t.Cleanup(func() { pgtest.RunErr(t, nil, "pg_ctl", "-D", c.DataDir, "-m", "fast", "-w", "stop") })
	waitRecoveryDone(t, c, false)
	if got := marks(t, c); got != allMarks {
		t.Fatalf("after a short outage: marks %s, want %s\n%s", got, allMarks, pgtest.Tail(c.Log(), 3000))
	}
	if startupFailed(c.Log()) {
		t.Fatalf("recovery failed instead of riding out the outage:\n%s", pgtest.Tail(c.Log(), 3000))
	}
	if !strings.Contains(c.Log(), "storage unavailable, retrying") {
		t.Fatalf("the outage was not seen (no retry logged):\n%s", pgtest.Tail(c.Log(), 3000))
	}
}

// TestStandbyStorageOutage: a standby (standby.signal) whose storage is down
// keeps running and retrying (wal-fetch exits 2, never a status that stops
// PostgreSQL), and catches up with every row once the storage is back.
func TestStandbyStorageOutage(t *testing.T) {
	srv := s3test.Start(t)
	a := newMarkedArchive(t, srv, "wal:", "  fetch_retry_time: 3s")
	c := a.restoreTo(t, a.r.env, "--standby")
	c.Configure(t, "wal_retrieve_retry_interval = '1s'")
	srv.Stop(t)
	startNoWait(t, c)
	time.Sleep(8 * time.Second) // well past fetch_retry_time
	log := c.Log()
	if !postmasterRunning(c) || startupFailed(log) {
		t.Fatalf("standby stopped while storage was down:\n%s", pgtest.Tail(log, 3000))
	}
	if n := strings.Count(log, "pgkeep: "); n < 2 {
		t.Fatalf("standby did not retry (%d pgkeep errors logged):\n%s", n, pgtest.Tail(log, 3000))
	}
	srv.Restart(t)
	pgtest.WaitFor(t, 2*time.Minute, "standby to catch up", func() (bool, error) {
		conn, err := pgxConnect(c)
		if err != nil {
			return false, err
		}
		defer conn.Close(context.Background())
		var s string
		var rec bool
		err = conn.QueryRow(context.Background(), "SELECT coalesce(string_agg(n::text, ',' ORDER BY n), ''), pg_is_in_recovery() FROM marks").Scan(&s, &rec)
		if err != nil {
			return false, err
		}
		if !rec {
			return false, errors.New("standby left recovery")
		}
		return s == allMarks, fmt.Errorf("marks %q", s)
	})
	if startupFailed(c.Log()) {
		t.Fatalf("the standby's recovery failed:\n%s", pgtest.Tail(c.Log(), 3000))
	}
}

// startupFailed: the startup process stopped (connection attempts before
// consistency log FATAL too; those are not it).
func startupFailed(log string) bool {
	return strings.Contains(log, "FATAL:  could not restore file") || strings.Contains(log, "startup process (PID")
}

func pgxConnect(c *pgtest.Cluster) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return pgx.Connect(ctx, c.DSN())
}

// lastLines is the last n lines of log containing s.
func lastLines(log, s string, n int) string {
	var hits []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, s) {
			hits = append(hits, l)
		}
	}
	if len(hits) > n {
		hits = hits[len(hits)-n:]
	}
	return strings.Join(hits, " | ")
}

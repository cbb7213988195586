// Package e2e runs pgkeep the way PostgreSQL does, against real PostgreSQL
// 15 clusters, a real MinIO server and local repositories.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgkeep/pgkeep/internal/pgtest"
	"github.com/pgkeep/pgkeep/internal/s3test"
	"github.com/pgkeep/pgkeep/internal/testbin"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

// testRepo is a configured repository plus the environment that makes
// pgkeep use it.
type testRepo struct {
	kind    string // "fs" or "s3"
	dir     string // work dir (config, keys)
	repoDir string // fs repository root
	config  string // pgkeep.yml path
	env     []string
	s3      *s3test.Server
	bucket  string
	// identity is the age identity file when the repository is encrypted.
	identity string
}

type repoOpts struct {
	kind      string
	encrypted bool
	// extra YAML lines appended to the config.
	extra []string
	s3    *s3test.Server
	// noInit leaves `pgkeep repo init` to the test.
	noInit bool
}

var bucketSeq int

// newRepo writes a config, creates the keys and runs `pgkeep repo init`
// as the postgres user (who runs archive_command).
func newRepo(t *testing.T, o repoOpts) *testRepo {
	t.Helper()
	bin := testbin.Pgkeep(t)
	r := &testRepo{kind: o.kind, dir: pgtest.TempDir(t)}
	var lines []string
	switch o.kind {
	case "fs":
		r.repoDir = filepath.Join(r.dir, "repo")
		lines = append(lines, "repository: file://"+r.repoDir)
	case "s3":
		r.s3 = o.s3
		if r.s3 == nil {
			r.s3 = s3test.Start(t)
		}
		bucketSeq++
		r.bucket = fmt.Sprintf("pgkeep-%d-%d", os.Getpid(), bucketSeq)
		r.s3.CreateBucket(t, r.bucket)
		lines = append(lines,
			"repository: s3://"+r.bucket+"/cluster1",
			"s3:",
			"  endpoint: "+r.s3.Endpoint,
			"  region: us-east-1",
			"  path_style: true",
			"  timeout: 5s",
			"  max_attempts: 2",
		)
		r.env = append(r.env, r.s3.Env()...)
	default:
		t.Fatalf("unknown repo kind %q", o.kind)
	}
	if o.encrypted {
		r.identity = filepath.Join(r.dir, "identity.txt")
		out := r.mustRun(t, "keygen", "--output", r.identity)
		lines = append(lines, "encryption:", "  recipients: ["+strings.TrimSpace(out)+"]", "  identity_file: "+r.identity)
	}
	lines = append(lines, o.extra...)
	r.config = filepath.Join(r.dir, "pgkeep.yml")
	if err := os.WriteFile(r.config, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r.env = append(r.env, "PGKEEP_CONFIG="+r.config)
	pgtest.Chown(t, r.dir)
	if !o.noInit {
		r.mustRun(t, "repo", "init")
	}
	_ = bin
	return r
}

// result of one pgkeep run.
type result struct {
	code           int
	stdout, stderr string
	elapsed        time.Duration
}

// run runs pgkeep as the postgres user with the repository's environment.
func (r *testRepo) run(t *testing.T, args ...string) result {
	t.Helper()
	return runPgkeep(t, r.env, "", args...)
}

func (r *testRepo) mustRun(t *testing.T, args ...string) string {
	t.Helper()
	res := r.run(t, args...)
	if res.code != 0 {
		t.Fatalf("pgkeep %s: exit %d\n%s%s", strings.Join(args, " "), res.code, res.stdout, res.stderr)
	}
	return res.stdout
}

func runPgkeep(t *testing.T, env []string, dir string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testbin.Pgkeep(t), args...)
	cmd.Env = append([]string{"PATH=/usr/bin:/bin", "HOME=/tmp"}, env...)
	cmd.Dir = dir
	if dir == "" {
		cmd.Dir = "/"
	}
	pgtest.AsPostgres(t, cmd)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	start := time.Now()
	err := cmd.Run()
	res := result{stdout: so.String(), stderr: se.String(), elapsed: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	default:
		t.Fatalf("run pgkeep: %v", err)
	}
	return res
}

// archivingCluster starts PostgreSQL with archive_command = pgkeep wal-push
// to r; conf lines come after the archiving ones (later lines win).
func archivingCluster(t *testing.T, r *testRepo, conf ...string) *pgtest.Cluster {
	t.Helper()
	return archivingClusterWith(t, r, pgtest.Options{Conf: conf})
}

// archivingClusterWith is archivingCluster initdb'd and configured as o
// says: o.InitDBArgs (e.g. --data-checksums, for a primary whose restores
// pageChecks checks), o.Conf after the archiving lines, o.Env after r's.
func archivingClusterWith(t *testing.T, r *testRepo, o pgtest.Options) *pgtest.Cluster {
	t.Helper()
	o.Conf = slices.Concat([]string{
		"archive_mode = on",
		fmt.Sprintf("archive_command = '%s wal-push %%p'", testbin.Pgkeep(t)),
		"wal_keep_size = '2GB'",
		"max_wal_size = '4GB'",
		"checkpoint_timeout = '1h'",
	}, o.Conf)
	o.Env = slices.Concat(r.env, o.Env)
	c := pgtest.New(t, pgtest.TempDir(t), o)
	c.Start(t)
	return c
}

// withChecksums is the pgtest.Options of a cluster with data checksums.
var withChecksums = pgtest.Options{InitDBArgs: []string{"--data-checksums"}}

// forEachDatabase calls fn with a connection to each database of c that
// accepts connections, in name order; the connection is closed when fn
// returns (or fails the test).
func forEachDatabase(t *testing.T, c *pgtest.Cluster, fn func(db string, conn *pgx.Conn)) {
	t.Helper()
	ctx := context.Background()
	conn := c.Conn(t)
	rows, err := conn.Query(ctx, "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1")
	if err != nil {
		t.Fatal(err)
	}
	dbs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	for _, db := range dbs {
		func() {
			dc, err := pgx.Connect(ctx, strings.Replace(c.DSN(), "dbname=postgres", "dbname="+db, 1))
			if err != nil {
				t.Fatalf("connect to %s: %v", db, err)
			}
			defer dc.Close(ctx)
			fn(db, dc)
		}()
	}
}

// walFiles returns the archived-status names PostgreSQL marked .done.
func doneFiles(t *testing.T, c *pgtest.Cluster) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(c.DataDir, "pg_wal", "archive_status"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if n, ok := strings.CutSuffix(e.Name(), ".done"); ok {
			names = append(names, n)
		}
	}
	return names
}

func readyFiles(t *testing.T, c *pgtest.Cluster) []string {
	t.Helper()
	entries, _ := os.ReadDir(filepath.Join(c.DataDir, "pg_wal", "archive_status"))
	var names []string
	for _, e := range entries {
		if n, ok := strings.CutSuffix(e.Name(), ".ready"); ok {
			names = append(names, n)
		}
	}
	return names
}

// lastArchived returns pg_stat_archiver's last_archived_wal and counters.
func archiverStats(t *testing.T, c *pgtest.Cluster) (last string, archived, failed int64) {
	t.Helper()
	conn := c.Conn(t)
	defer conn.Close(context.Background())
	var l *string
	err := conn.QueryRow(context.Background(),
		"SELECT last_archived_wal, archived_count, failed_count FROM pg_stat_archiver").Scan(&l, &archived, &failed)
	if err != nil {
		t.Fatal(err)
	}
	if l != nil {
		last = *l
	}
	return last, archived, failed
}

// switchSegments writes about rowsPerSegment rows then switches WAL, n
// times, and returns the name of the last completed segment.
func switchSegments(t *testing.T, c *pgtest.Cluster, n, rowsPerSegment int) string {
	t.Helper()
	conn := c.Conn(t)
	defer conn.Close(context.Background())
	ctx := context.Background()
	if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS filler (id bigserial primary key, payload text)"); err != nil {
		t.Fatal(err)
	}
	var last string
	for i := 0; i < n; i++ {
		if rowsPerSegment > 0 {
			if _, err := conn.Exec(ctx, "INSERT INTO filler (payload) SELECT md5(g::text) || repeat('x', 100) FROM generate_series(1, $1) g", rowsPerSegment); err != nil {
				t.Fatal(err)
			}
		}
		if err := conn.QueryRow(ctx, "SELECT pg_walfile_name(pg_switch_wal())").Scan(&last); err != nil {
			t.Fatal(err)
		}
	}
	return last
}

// waitArchived waits until PostgreSQL reports name (or a later file) archived.
func waitArchived(t *testing.T, c *pgtest.Cluster, name string, timeout time.Duration) {
	t.Helper()
	pgtest.WaitFor(t, timeout, "archiving of "+name, func() (bool, error) {
		last, _, failed := archiverStats(t, c)
		if failed > 0 {
			return false, fmt.Errorf("archiver failures: %d; log tail: %s", failed, pgtest.Tail(c.Log(), 1500))
		}
		return last >= name && len(last) == 24, nil
	})
}

func pgkeepBin(t *testing.T) string { return testbin.Pgkeep(t) }

// pgkeepCommand is a pgkeep command as runPgkeep runs it (as postgres, a
// minimal environment plus env), for tests that start and signal it.
func pgkeepCommand(t *testing.T, env []string, args ...string) *exec.Cmd {
	cmd := exec.Command(testbin.Pgkeep(t), args...)
	cmd.Env = append([]string{"PATH=/usr/bin:/bin", "HOME=/tmp"}, env...)
	cmd.Dir = "/"
	pgtest.AsPostgres(t, cmd)
	return cmd
}

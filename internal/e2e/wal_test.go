package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/pgtest"
	"github.com/pgkeep/pgkeep/internal/s3test"
	"github.com/pgkeep/pgkeep/internal/testbin"
	"github.com/pgkeep/pgkeep/pg"
)

// TestArchiveAndFetchEverySegment is the main contract: PostgreSQL archives
// 40+ segments through wal-push, and wal-fetch gives back exactly the bytes
// PostgreSQL wrote, for every repository kind, with and without encryption.
func TestArchiveAndFetchEverySegment(t *testing.T) {
	srv := s3test.Start(t)
	for _, kind := range []string{"fs", "s3"} {
		for _, enc := range []bool{false, true} {
			name := kind + "/plain"
			if enc {
				name = kind + "/age"
			}
			t.Run(name, func(t *testing.T) {
				r := newRepo(t, repoOpts{kind: kind, encrypted: enc, s3: srv})
				c := archivingCluster(t, r)
				last := switchSegments(t, c, 42, 3000)
				waitArchived(t, c, last, 3*time.Minute)

				done := doneFiles(t, c)
				if len(done) < 40 {
					t.Fatalf("only %d files archived, want >= 40", len(done))
				}
				out := pgtest.TempDir(t)
				segments := 0
				for _, f := range done {
					want, err := os.ReadFile(filepath.Join(c.DataDir, "pg_wal", f))
					if err != nil {
						t.Fatal(err)
					}
					dest := filepath.Join(out, f)
					res := r.run(t, "wal-fetch", f, dest)
					if res.code != 0 {
						t.Fatalf("wal-fetch %s: exit %d: %s", f, res.code, res.stderr)
					}
					got, err := os.ReadFile(dest)
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(got, want) {
						t.Fatalf("%s: fetched %d bytes differ from the %d PostgreSQL wrote", f, len(got), len(want))
					}
					if len(f) == 24 {
						segments++
					}
				}
				if segments < 40 {
					t.Fatalf("compared %d segments, want >= 40", segments)
				}
				if enc {
					assertNoPlaintext(t, r, c)
				}
				// A file never archived: exit 1, silent.
				res := r.run(t, "wal-fetch", "0000000100000099000000FF", filepath.Join(out, "missing"))
				if res.code != 1 || res.stderr != "" {
					t.Fatalf("missing segment: exit %d stderr %q, want 1 and silence", res.code, res.stderr)
				}
				if _, err := os.Stat(filepath.Join(out, "missing")); !os.IsNotExist(err) {
					t.Fatalf("missing segment left a file: %v", err)
				}
			})
		}
	}
}

// assertNoPlaintext checks that a table's rows do not appear in the
// repository's objects (fs only: we can read the files directly).
func assertNoPlaintext(t *testing.T, r *testRepo, c *pgtest.Cluster) {
	t.Helper()
	if r.kind != "fs" {
		return
	}
	marker := []byte(strings.Repeat("x", 100))
	filepath.Walk(r.repoDir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return nil
		}
		data, _ := os.ReadFile(p)
		if bytes.Contains(data, marker) {
			t.Errorf("%s contains plaintext row data", p)
		}
		return nil
	})
}

// TestStandbyReplaysArchivedWAL: a standby made with pg_basebackup and no
// streaming replays what the primary wrote after the base backup, through
// restore_command alone (with prefetch).
func TestStandbyReplaysArchivedWAL(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs", encrypted: true, extra: []string{"wal:", "  prefetch: 4"}})
	primary := archivingCluster(t, r)
	conn := primary.Conn(t)
	primary.Exec(t, conn, "CREATE TABLE accounts (id int primary key, balance bigint)")
	primary.Exec(t, conn, "INSERT INTO accounts SELECT g, g*10 FROM generate_series(1, 1000) g")

	standbyDir := filepath.Join(pgtest.TempDir(t), "standby")
	pgtest.Run(t, nil, "pg_basebackup", "-h", "127.0.0.1", "-p", fmt.Sprint(primary.Port), "-U", "postgres",
		"-D", standbyDir, "-X", "none", "--no-sync", "-c", "fast")

	// Written after the base backup: must arrive through the archive only.
	primary.Exec(t, conn, "INSERT INTO accounts SELECT g, g*10 FROM generate_series(1001, 5000) g")
	primary.Exec(t, conn, "UPDATE accounts SET balance = balance + 1 WHERE id % 7 = 0")
	primary.Exec(t, conn, "DELETE FROM accounts WHERE id % 100 = 0")
	last := switchSegments(t, primary, 12, 20000)
	waitArchived(t, primary, last, 3*time.Minute)
	var wantCount, wantSum int64
	if err := conn.QueryRow(context.Background(), "SELECT count(*), sum(balance) FROM accounts").Scan(&wantCount, &wantSum); err != nil {
		t.Fatal(err)
	}

	os.WriteFile(filepath.Join(standbyDir, "standby.signal"), nil, 0o600)
	standby := pgtest.Existing(t, standbyDir, pgtest.Options{Env: r.env, Conf: []string{
		"archive_mode = off",
		fmt.Sprintf("restore_command = '%s wal-fetch %%f %%p'", testbin.Pgkeep(t)),
		"primary_conninfo = ''",
		"hot_standby = on",
	}})
	standby.Start(t)
	var gotCount, gotSum int64
	pgtest.WaitFor(t, 3*time.Minute, "standby to replay the archive", func() (bool, error) {
		sc := standby.Conn(t)
		defer sc.Close(context.Background())
		err := sc.QueryRow(context.Background(), "SELECT count(*), coalesce(sum(balance),0) FROM accounts").Scan(&gotCount, &gotSum)
		return err == nil && gotCount == wantCount && gotSum == wantSum, err
	})
	if gotCount != 4950 {
		t.Fatalf("standby has %d rows, want 4950", gotCount)
	}
	// The standby must have used the prefetch directory.
	if _, err := os.Stat(filepath.Join(standbyDir, "pg_wal", "pgkeep", "prefetch")); err != nil {
		t.Fatalf("prefetch never ran: %v", err)
	}
}

// walDir makes a fake data directory layout with a pg_wal holding files,
// so wal-push can be driven without a server.
func walDir(t *testing.T) string {
	t.Helper()
	d := pgtest.MkdirFor(t, filepath.Join(pgtest.TempDir(t), "pgdata"))
	pgtest.MkdirFor(t, filepath.Join(d, "pg_wal", "archive_status"))
	pgtest.Chown(t, d)
	return d
}

func writeSegment(t *testing.T, pgdata, name string, data []byte) {
	t.Helper()
	p := filepath.Join(pgdata, "pg_wal", name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	pgtest.Chown(t, p)
}

// testSystemID is the system identifier of the fake segments tests push.
const testSystemID = 7400000000000000001

// randomSegment is a fake segment for name: a valid long page header (of
// testSystemID, size-byte segments), then half random, half zeros.
func randomSegment(t *testing.T, name string, size int) []byte {
	t.Helper()
	b := make([]byte, size)
	rand.Read(b[:size/2]) // half random, half zeros: realistic-ish ratio
	stampSegmentHeader(t, b, name, testSystemID)
	return b
}

// stampSegmentHeader writes the long page header PostgreSQL 15 starts
// segment name with, for a cluster sysid.
func stampSegmentHeader(t *testing.T, b []byte, name string, sysid uint64) {
	t.Helper()
	wf, err := pg.ParseWALFileName(name[:24])
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	clear(b[:pg.WALLongPageHeaderSize])
	le.PutUint16(b[0:], pg.WALPageMagic15)
	le.PutUint16(b[2:], pg.XLPLongHeader)
	le.PutUint32(b[4:], wf.Timeline)
	le.PutUint64(b[8:], wf.SegNo(int64(len(b)))*uint64(len(b)))
	le.PutUint64(b[24:], sysid)
	le.PutUint32(b[32:], uint32(len(b)))
	le.PutUint32(b[36:], 8192)
}

// fetchBytes fetches name into a temp file and returns its content.
func fetchBytes(t *testing.T, r *testRepo, name string) ([]byte, result) {
	t.Helper()
	dest := filepath.Join(pgtest.TempDir(t), name)
	res := r.run(t, "wal-fetch", name, dest)
	data, _ := os.ReadFile(dest)
	return data, res
}

func TestPushSameAndConflictingContent(t *testing.T) {
	for _, kind := range []string{"fs", "s3"} {
		t.Run(kind, func(t *testing.T) {
			r := newRepo(t, repoOpts{kind: kind})
			pgdata := walDir(t)
			seg := "000000010000000000000003"
			orig := randomSegment(t, seg, 16<<20)
			writeSegment(t, pgdata, seg, orig)
			push := func() result { return runPgkeep(t, r.env, pgdata, "wal-push", "pg_wal/"+seg) }
			if res := push(); res.code != 0 {
				t.Fatalf("first push: exit %d %s", res.code, res.stderr)
			}
			if res := push(); res.code != 0 {
				t.Fatalf("identical push: exit %d %s", res.code, res.stderr)
			}
			other := randomSegment(t, seg, 16<<20)
			writeSegment(t, pgdata, seg, other)
			res := push()
			if res.code == 0 || res.code >= 126 {
				t.Fatalf("conflicting push: exit %d, want 1..125", res.code)
			}
			if !strings.Contains(res.stderr, "different file with this name is already archived") ||
				strings.Count(strings.TrimSpace(res.stderr), "\n") != 0 {
				t.Fatalf("conflicting push message: %q", res.stderr)
			}
			got, fres := fetchBytes(t, r, seg)
			if fres.code != 0 || !bytes.Equal(got, orig) {
				t.Fatalf("archived copy changed after a conflicting push (exit %d)", fres.code)
			}
			// Not a WAL name: refused before anything is stored.
			writeSegment(t, pgdata, "notawal", []byte("x"))
			if res := runPgkeep(t, r.env, pgdata, "wal-push", "pg_wal/notawal"); res.code == 0 || !strings.Contains(res.stderr, "not a WAL file name") {
				t.Fatalf("bad name: exit %d %q", res.code, res.stderr)
			}
		})
	}
}

// TestConcurrentIdenticalPushes is archive_mode=always: every node pushes
// the same segment at the same moment; all must succeed.
func TestConcurrentIdenticalPushes(t *testing.T) {
	for _, kind := range []string{"fs", "s3"} {
		t.Run(kind, func(t *testing.T) {
			r := newRepo(t, repoOpts{kind: kind, encrypted: true})
			seg := "000000020000000000000007"
			data := randomSegment(t, seg, 16<<20)
			var dirs []string
			for i := 0; i < 4; i++ {
				d := walDir(t)
				writeSegment(t, d, seg, data)
				dirs = append(dirs, d)
			}
			results := make(chan result, len(dirs))
			for _, d := range dirs {
				go func() { results <- runPgkeep(t, r.env, d, "wal-push", "pg_wal/"+seg) }()
			}
			for range dirs {
				if res := <-results; res.code != 0 {
					t.Fatalf("concurrent identical push: exit %d %s", res.code, res.stderr)
				}
			}
			got, res := fetchBytes(t, r, seg)
			if res.code != 0 || !bytes.Equal(got, data) {
				t.Fatalf("fetch after concurrent pushes: exit %d %s", res.code, res.stderr)
			}
		})
	}
}

func TestFetchWrongKeyAndTruncatedObject(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs", encrypted: true})
	pgdata := walDir(t)
	segs := []string{"000000010000000000000001", "000000010000000000000002"}
	for _, s := range segs {
		writeSegment(t, pgdata, s, randomSegment(t, s, 16<<20))
		if res := runPgkeep(t, r.env, pgdata, "wal-push", "pg_wal/"+s); res.code != 0 {
			t.Fatalf("push: %s", res.stderr)
		}
	}
	before := repoObjects(t, r.repoDir)

	// Wrong identity: a fresh key that did not encrypt anything.
	wrong := filepath.Join(r.dir, "wrong.txt")
	r.mustRun(t, "keygen", "--output", wrong)
	env := append(append([]string{}, r.env...), "PGKEEP_ENCRYPTION_IDENTITY_FILE="+wrong)
	// A data directory in archive recovery: neither failure is "missing"
	// (1), and both stop recovery (255) rather than end it.
	datadir := pgtest.TempDir(t)
	pgtest.MkdirFor(t, filepath.Join(datadir, "pg_wal"))
	os.WriteFile(filepath.Join(datadir, "recovery.signal"), nil, 0o644)
	dest := filepath.Join(datadir, "pg_wal", "RECOVERYXLOG")
	res := runPgkeep(t, env, "", "wal-fetch", segs[0], dest)
	if res.code != 255 || !strings.Contains(res.stderr, "wrong key") || strings.Count(strings.TrimSpace(res.stderr), "\n") != 0 {
		t.Fatalf("wrong key: exit %d %q", res.code, res.stderr)
	}
	// The same in standby mode: 2, PostgreSQL retries and keeps running.
	os.WriteFile(filepath.Join(datadir, "standby.signal"), nil, 0o644)
	if res := runPgkeep(t, env, datadir, "wal-fetch", segs[0], "pg_wal/RECOVERYXLOG"); res.code != 2 || !strings.Contains(res.stderr, "wrong key") {
		t.Fatalf("wrong key on a standby: exit %d %q", res.code, res.stderr)
	}
	os.Remove(filepath.Join(datadir, "standby.signal"))
	if strings.Contains(res.stderr, "AGE-SECRET-KEY") {
		t.Fatal("secret key in error output")
	}
	assertNoFile(t, dest)

	// Truncated object: cut the stored file in half.
	obj := filepath.Join(r.repoDir, "wal", segs[1][:16], segs[1])
	data, err := os.ReadFile(obj)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(obj, data[:len(data)/2], 0o640); err != nil {
		t.Fatal(err)
	}
	res = runPgkeep(t, r.env, "", "wal-fetch", segs[1], dest)
	if res.code != 255 || !strings.Contains(res.stderr, "corrupt or truncated") {
		t.Fatalf("truncated: exit %d %q", res.code, res.stderr)
	}
	assertNoFile(t, dest)
	if after := repoObjects(t, r.repoDir); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Fatalf("repository objects changed: %v -> %v", before, after)
	}
	// The intact segment is still fetchable.
	if _, res := fetchBytes(t, r, segs[0]); res.code != 0 {
		t.Fatalf("intact segment: exit %d %s", res.code, res.stderr)
	}
}

func assertNoFile(t *testing.T, p string) {
	t.Helper()
	entries, _ := os.ReadDir(filepath.Dir(p))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), filepath.Base(p)) {
			t.Fatalf("left %s behind after a failed fetch", e.Name())
		}
	}
}

func repoObjects(t *testing.T, root string) []string {
	t.Helper()
	var names []string
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && !strings.Contains(p, "/.tmp/") {
			rel, _ := filepath.Rel(root, p)
			names = append(names, rel)
		}
		return nil
	})
	sort.Strings(names)
	return names
}

func TestBadConfig(t *testing.T) {
	dir := pgtest.TempDir(t)
	cfg := filepath.Join(dir, "pgkeep.yml")
	os.WriteFile(cfg, []byte("repository: file:///tmp/x\nrepositry: oops\n"), 0o644)
	res := runPgkeep(t, []string{"PGKEEP_CONFIG=" + cfg}, "", "wal-push", "pg_wal/000000010000000000000001")
	if res.code != 2 || !strings.Contains(res.stderr, `unknown key "repositry"`) || !strings.Contains(res.stderr, cfg) {
		t.Fatalf("unknown key: exit %d %q", res.code, res.stderr)
	}
	res = runPgkeep(t, []string{"PGKEEP_CONFIG=" + cfg, "PGKEEP_COMPRESION_LEVEL=3"}, "", "version")
	if res.code != 0 {
		t.Fatalf("version should not read config: %d %s", res.code, res.stderr)
	}
	os.WriteFile(cfg, []byte("repository: file:///tmp/x\n"), 0o644)
	// An unknown PGKEEP_* variable (a stray one in the postmaster's
	// environment) is one warning naming it, and the command goes on.
	res = runPgkeep(t, []string{"PGKEEP_CONFIG=" + cfg, "PGKEEP_COMPRESION_LEVEL=3"}, "", "config", "check")
	if res.code != 0 || strings.Count(res.stderr, "PGKEEP_COMPRESION_LEVEL") != 1 ||
		!strings.Contains(res.stderr, "not a pgkeep setting") || !strings.Contains(res.stderr, "did_you_mean=PGKEEP_COMPRESSION_LEVEL") {
		t.Fatalf("unknown env: exit %d %q", res.code, res.stderr)
	}
	res = runPgkeep(t, []string{"PGKEEP_CONFIG=" + filepath.Join(dir, "nope.yml")}, "", "repo", "show")
	if res.code != 2 || !strings.Contains(res.stderr, "nope.yml") {
		t.Fatalf("missing explicit config: exit %d %q", res.code, res.stderr)
	}
	// Uninitialized repository: clear message, non-zero.
	empty := pgtest.MkdirFor(t, filepath.Join(dir, "empty"))
	res = runPgkeep(t, []string{"PGKEEP_REPOSITORY=file://" + empty}, "", "repo", "show")
	if res.code == 0 || !strings.Contains(res.stderr, "not initialized") {
		t.Fatalf("uninitialized: exit %d %q", res.code, res.stderr)
	}
	// Re-init is refused and keeps the config.
	r := newRepo(t, repoOpts{kind: "fs"})
	before, _ := os.ReadFile(filepath.Join(r.repoDir, "config.json"))
	res = r.run(t, "repo", "init")
	after, _ := os.ReadFile(filepath.Join(r.repoDir, "config.json"))
	if res.code == 0 || !strings.Contains(res.stderr, "already initialized") || !bytes.Equal(before, after) {
		t.Fatalf("re-init: exit %d %q", res.code, res.stderr)
	}
}

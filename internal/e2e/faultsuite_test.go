package e2e

// The fault suite of docs/faults.md: storage down, unreadable and full for
// every command, every object kind corrupted, hostile names, a clock that
// jumps, kill -9 at each stage and concurrent commands. One seeded cluster
// and one repository are shared; cases that change the repository work on
// a copy of it.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/pgtest"
	"github.com/pgkeep/pgkeep/internal/s3test"
)

type faultFixture struct {
	r            *testRepo // fs, encrypted, bound to c
	c            *pgtest.Cluster
	good, second string // its two backups, oldest first
	seg          string // a segment c archived into r
	srv          *s3test.Server
	s3r          *testRepo // S3 repository holding fake segments
	s3segs       []string
}

// conn is the environment variables that let backup reach c.
func (f *faultFixture) conn() []string {
	return []string{
		fmt.Sprintf("PGKEEP_POSTGRES_DSN=host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", f.c.Port),
		"PGKEEP_PGDATA=" + f.c.DataDir,
	}
}

func envWith(base []string, kv ...string) []string {
	return append(append([]string{}, base...), kv...)
}

// cmdCase is one pgkeep command run against a faulty repository; check
// looks at what it left locally (data directory, fetch destination).
type cmdCase struct {
	name string
	rule exitRule
	run  func(t *testing.T) (res result, check func(t *testing.T))
}

// sixCommands runs every command against the repository env names.
func (f *faultFixture) sixCommands(env []string) []cmdCase {
	return []cmdCase{
		{"wal-push", pushFailed, func(t *testing.T) (result, func(*testing.T)) {
			d := walDir(t)
			seg := "0000000100000000000000F1"
			data := randomSegment(t, seg, 16<<20)
			writeSegment(t, d, seg, data)
			res := runPgkeep(t, env, d, "wal-push", "pg_wal/"+seg)
			return res, func(t *testing.T) {
				if got, err := os.ReadFile(filepath.Join(d, "pg_wal", seg)); err != nil || !bytes.Equal(got, data) {
					t.Errorf("wal-push changed the segment in pg_wal (%v)", err)
				}
			}
		}},
		{"wal-fetch", fetchFailed, func(t *testing.T) (result, func(*testing.T)) {
			dest := filepath.Join(pgtest.TempDir(t), "RECOVERYXLOG")
			res := runPgkeep(t, env, "", "wal-fetch", f.seg, dest)
			return res, func(t *testing.T) { assertEmptyDir(t, "wal-fetch", filepath.Dir(dest)) }
		}},
		{"backup", failed, func(t *testing.T) (result, func(*testing.T)) {
			return runPgkeep(t, envWith(env, f.conn()...), "", "backup"), func(*testing.T) {}
		}},
		{"restore", failed, func(t *testing.T) (result, func(*testing.T)) {
			dir := emptyDirFor(t)
			res := runPgkeep(t, env, "", "restore", "--pgdata", dir)
			return res, func(t *testing.T) { assertEmptyDir(t, "restore", dir) }
		}},
		{"delete", failed, func(t *testing.T) (result, func(*testing.T)) {
			return runPgkeep(t, env, "", "delete", "--retain-full", "1", "--debris-min-age", "0s"), func(*testing.T) {}
		}},
		{"verify", failed, func(t *testing.T) (result, func(*testing.T)) {
			return runPgkeep(t, env, "", "verify"), func(*testing.T) {}
		}},
	}
}

const noFetchRetry = "PGKEEP_WAL_FETCH_RETRY_TIME=0s"

func newFaultFixture(t *testing.T) *faultFixture {
	t.Helper()
	f := &faultFixture{srv: s3test.Start(t)}
	f.r = newRepo(t, repoOpts{kind: "fs", encrypted: true})
	// wal-fetch rides out a storage outage for wal.fetch_retry_time (5 min
	// by default); the suite asserts what it says once it gives up.
	f.r.env = append(f.r.env, noFetchRetry)
	f.c, f.good = seeded(t, f.r)
	waitArchived(t, f.c, switchSegments(t, f.c, 1, 100), time.Minute)
	f.second = takeBackup(t, f.r, f.c)
	for _, d := range doneFiles(t, f.c) {
		if len(d) == 24 {
			f.seg = d
			break
		}
	}
	if f.seg == "" {
		t.Fatal("no archived segment")
	}
	secrets = append(secrets, f.srv.SecretKey)
	f.s3r = newRepo(t, repoOpts{kind: "s3", encrypted: true, s3: f.srv})
	f.s3r.env = append(f.s3r.env, noFetchRetry)
	d := walDir(t)
	for _, s := range []string{"000000010000000000000001", "000000010000000000000002"} {
		writeSegment(t, d, s, randomSegment(t, s, 16<<20))
		if res := runPgkeep(t, f.s3r.env, d, "wal-push", "pg_wal/"+s); res.code != 0 {
			t.Fatalf("push to S3: %s", res.stderr)
		}
		f.s3segs = append(f.s3segs, s)
	}
	return f
}

func TestFaultSuite(t *testing.T) {
	f := newFaultFixture(t)
	t.Run("storage", f.storage)
	t.Run("corrupt", f.corrupt)
	t.Run("names", f.names)
	t.Run("clock", f.clock)
	t.Run("kill", f.kill)
	t.Run("sigterm/restore", f.sigtermRestore)
	t.Run("concurrent", f.concurrent)
	t.Run("kill-backup", f.killBackup)
}

// storage: the repository down, unreadable or full, for each command.
func (f *faultFixture) storage(t *testing.T) {
	r := f.r
	t.Run("down/fs", func(t *testing.T) {
		gone := filepath.Join(pgtest.TempDir(t), "gone")
		env := envWith(r.env, "PGKEEP_REPOSITORY=file://"+gone)
		for _, c := range f.sixCommands(env) {
			t.Run(c.name, func(t *testing.T) {
				res, check := c.run(t)
				assertFailed(t, c.name, res, c.rule, gone, "missing")
				check(t)
				if _, err := os.Stat(gone); !os.IsNotExist(err) {
					t.Errorf("%s created the missing repository directory (%v)", c.name, err)
				}
			})
		}
	})
	t.Run("down/s3", func(t *testing.T) {
		before := s3Objects(t, f.srv, f.s3r.bucket)
		f.srv.Stop(t)
		restarted := false
		defer func() {
			if !restarted {
				f.srv.Restart(t)
			}
		}()
		for _, c := range f.sixCommands(f.s3r.env) {
			t.Run(c.name, func(t *testing.T) {
				res, check := c.run(t)
				assertFailed(t, c.name, res, c.rule, "connection refused")
				if res.elapsed > 30*time.Second {
					t.Errorf("%s with S3 down took %s (timeout 5s, 2 attempts)", c.name, res.elapsed)
				}
				check(t)
			})
		}
		f.srv.Restart(t)
		restarted = true
		if after := s3Objects(t, f.srv, f.s3r.bucket); after != before {
			t.Errorf("objects changed while S3 was down:\n%s\nvs\n%s", before, after)
		}
		for _, s := range f.s3segs {
			if _, res := fetchBytes(t, f.s3r, s); res.code != 0 {
				t.Errorf("%s after the restart: exit %d %s", s, res.code, res.stderr)
			}
		}
	})

	t.Run("down/s3/backup-mid-run", func(t *testing.T) {
		// A fresh S3 repository: the backup uploads its packs, then waits
		// for WAL that only the fs repository gets; S3 stops meanwhile.
		br := newRepo(t, repoOpts{kind: "s3", encrypted: true, s3: f.srv})
		done := make(chan result, 1)
		go func() { done <- runPgkeep(t, envWith(br.env, f.conn()...), "", "backup", "--wal-timeout", "90s") }()
		waitInWALWait(t, f.c)
		f.srv.Stop(t)
		stopped := time.Now()
		res := <-done
		took := time.Since(stopped)
		f.srv.Restart(t)
		assertFailed(t, "backup with S3 stopped mid-run", res, failed, "connection refused")
		if took > 45*time.Second {
			t.Errorf("backup noticed S3 down only after %s", took)
		}
		if strings.TrimSpace(res.stdout) != "" {
			t.Errorf("a failed backup printed an ID: %q", res.stdout)
		}
		if rows := listBackups(t, br); countComplete(rows) != 0 {
			t.Errorf("after S3 went down mid-backup: %+v", rows)
		}
	})
	t.Run("unreadable", func(t *testing.T) {
		t.Run("wal-push", func(t *testing.T) {
			wr := newRepo(t, repoOpts{kind: "fs", encrypted: true})
			wr.env = append(wr.env, noFetchRetry)
			d := walDir(t)
			first, seg := "000000010000000000000001", "000000010000000000000002"
			writeSegment(t, d, first, randomSegment(t, first, 16<<20))
			if res := pushIn(t, wr.env, d, first); res.code != 0 {
				t.Fatal(res.stderr)
			}
			writeSegment(t, d, seg, randomSegment(t, seg, 16<<20))
			before := objectSums(t, wr.repoDir)
			chmodFor(t, filepath.Join(wr.repoDir, "wal", seg[:16]), 0)
			res := pushIn(t, wr.env, d, seg)
			assertFailed(t, "wal-push", res, pushFailed, "permission denied")
			os.Chmod(filepath.Join(wr.repoDir, "wal", seg[:16]), 0o750)
			assertKept(t, "wal-push", before, objectSums(t, wr.repoDir), nil)
			if res := pushIn(t, wr.env, d, seg); res.code != 0 {
				t.Errorf("push once readable again: %s", res.stderr)
			}
		})
		t.Run("wal-fetch", func(t *testing.T) {
			chmodFor(t, filepath.Join(r.repoDir, "wal", f.seg[:16], f.seg), 0)
			dest := filepath.Join(pgtest.TempDir(t), "RECOVERYXLOG")
			res := r.run(t, "wal-fetch", f.seg, dest)
			assertFailed(t, "wal-fetch", res, fetchFailed, "permission denied", f.seg)
			assertEmptyDir(t, "wal-fetch", filepath.Dir(dest))
		})
		t.Run("backup", func(t *testing.T) {
			before := objectSums(t, r.repoDir)
			chmodFor(t, filepath.Join(r.repoDir, "backups"), 0)
			res := runPgkeep(t, envWith(r.env, f.conn()...), "", "backup")
			assertFailed(t, "backup", res, failed, "permission denied")
			os.Chmod(filepath.Join(r.repoDir, "backups"), 0o750)
			assertKept(t, "backup", before, objectSums(t, r.repoDir), func(n string) bool { return strings.HasPrefix(n, "wal/") })
		})
		t.Run("restore", func(t *testing.T) {
			packs, _ := filepath.Glob(filepath.Join(r.repoDir, "backups", f.good, "pack", "*"))
			for _, p := range packs {
				chmodFor(t, p, 0)
			}
			dir := emptyDirFor(t)
			res := r.run(t, "restore", "--pgdata", dir, "--backup", f.good)
			assertFailed(t, "restore", res, failed, "permission denied", "pack/")
			assertNoCluster(t, "restore", dir)
		})
		t.Run("delete", func(t *testing.T) {
			cp := copyRepo(t, r, "")
			before := objectSums(t, cp.repoDir)
			chmodFor(t, filepath.Join(cp.repoDir, "backups", f.second, "backup.json"), 0)
			res := cp.run(t, "delete", "--retain-full", "1", "--debris-min-age", "0s")
			assertFailed(t, "delete", res, failed, "permission denied", "backup.json")
			os.Chmod(filepath.Join(cp.repoDir, "backups", f.second, "backup.json"), 0o640)
			assertKept(t, "delete", before, objectSums(t, cp.repoDir), nil)
		})
		t.Run("verify", func(t *testing.T) {
			packs, _ := filepath.Glob(filepath.Join(r.repoDir, "backups", f.good, "pack", "*"))
			chmodFor(t, packs[0], 0)
			res := r.run(t, "verify", f.good)
			assertFailed(t, "verify", res, failed, "problem")
			if !strings.Contains(res.stdout, "permission denied") || !strings.Contains(res.stdout, f.good) {
				t.Errorf("verify of an unreadable pack does not name it: %q", res.stdout)
			}
		})
	})

	t.Run("full", func(t *testing.T) {
		t.Run("wal-push", func(t *testing.T) {
			disk := smallDisk(t, 32)
			wr := altRepo(r, filepath.Join(disk, "repo"))
			if res := runPgkeep(t, wr.env, "", "repo", "init"); res.code != 0 {
				t.Fatal(res.stderr)
			}
			unfill := fillDisk(t, disk, 256<<10)
			d := walDir(t)
			seg := "000000010000000000000001"
			data := randomSegment(t, seg, 16<<20)
			writeSegment(t, d, seg, data)
			before := objectSums(t, wr.repoDir)
			res := pushIn(t, wr.env, d, seg)
			assertFailed(t, "wal-push", res, pushFailed, "no space left on device")
			// The first push binds the repository to the segment's system
			// before storing it: that may stay, the segment may not.
			assertKept(t, "wal-push", before, objectSums(t, wr.repoDir), func(n string) bool { return strings.HasPrefix(n, "bind/") })
			assertEmptyDir(t, "wal-push", filepath.Join(wr.repoDir, ".tmp"))
			if _, res := fetchBytes(t, wr, seg); res.code != 1 {
				t.Errorf("a failed push left %s visible (fetch exit %d)", seg, res.code)
			}
			unfill()
			if res := pushIn(t, wr.env, d, seg); res.code != 0 {
				t.Errorf("push once there is space: %s", res.stderr)
			}
			if got, res := fetchBytes(t, wr, seg); res.code != 0 || !bytes.Equal(got, data) {
				t.Errorf("fetch after the retried push: exit %d", res.code)
			}
		})
		t.Run("wal-fetch", func(t *testing.T) {
			disk := smallDisk(t, 8)
			fillDisk(t, disk, 256<<10)
			dest := filepath.Join(disk, "RECOVERYXLOG")
			res := r.run(t, "wal-fetch", f.seg, dest)
			assertFailed(t, "wal-fetch", res, fetchFailed, "no space left on device")
			assertEmptyDir(t, "wal-fetch", disk, "filler")
		})
		t.Run("backup", func(t *testing.T) {
			disk := smallDisk(t, 64)
			br := altRepo(r, filepath.Join(disk, "repo"))
			if res := runPgkeep(t, br.env, "", "repo", "init"); res.code != 0 {
				t.Fatal(res.stderr)
			}
			fillDisk(t, disk, 1<<20)
			before := objectSums(t, r.repoDir)
			res := runPgkeep(t, envWith(br.env, f.conn()...), "", "backup")
			assertFailed(t, "backup", res, failed, "no space left on device")
			if strings.TrimSpace(res.stdout) != "" {
				t.Errorf("a failed backup printed an ID: %q", res.stdout)
			}
			if rows := listBackups(t, br); countComplete(rows) != 0 {
				t.Errorf("backup on a full disk listed complete: %+v", rows)
			}
			assertKept(t, "the shared repository", before, objectSums(t, r.repoDir), func(n string) bool { return strings.HasPrefix(n, "wal/") })
		})
		t.Run("restore", func(t *testing.T) {
			disk := smallDisk(t, 16)
			dir := pgtest.MkdirFor(t, filepath.Join(disk, "pgdata"))
			before := objectSums(t, r.repoDir)
			res := r.run(t, "restore", "--pgdata", dir, "--backup", f.good)
			assertFailed(t, "restore", res, failed, "no space left on device")
			assertNoCluster(t, "restore", dir)
			assertKept(t, "restore", before, objectSums(t, r.repoDir), func(n string) bool { return strings.HasPrefix(n, "wal/") })
		})
		t.Run("delete", func(t *testing.T) {
			disk := smallDisk(t, 128)
			cp := copyRepo(t, r, disk)
			fillDisk(t, disk, 0)
			res := cp.run(t, "delete", "--retain-full", "1")
			if res.code != 0 || !strings.Contains(res.stdout, "deleted backup "+f.good) {
				t.Fatalf("delete on a full disk: exit %d\n%s%s", res.code, res.stdout, res.stderr)
			}
			if rows := listBackups(t, cp); len(rows) != 1 || rows[0].ID != f.second {
				t.Errorf("after delete on a full disk: %+v", rows)
			}
			if v := cp.run(t, "verify", "--no-cache"); v.code != 0 {
				t.Errorf("verify after delete on a full disk: %s%s", v.stdout, v.stderr)
			}
		})
		t.Run("verify", func(t *testing.T) {
			disk := smallDisk(t, 4)
			fillDisk(t, disk, 0)
			res := runPgkeep(t, envWith(r.env, "PGKEEP_VERIFY_CACHE_DIR="+filepath.Join(disk, "cache")), "", "verify")
			if res.code != 0 || !strings.Contains(res.stdout, "all data readable") {
				t.Errorf("verify with its cache disk full: exit %d\n%s%s", res.code, res.stdout, res.stderr)
			}
		})
	})
}

// flipByte flips one byte in the middle of file p.
func flipByte(t *testing.T, p string) {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x5a
	if err := os.WriteFile(p, data, 0o640); err != nil {
		t.Fatal(err)
	}
}

// corrupt: every object kind damaged; each is named, nothing else changes.
func (f *faultFixture) corrupt(t *testing.T) {
	r := f.r
	t.Run("wal-segment", func(t *testing.T) {
		cp := copyRepo(t, r, "")
		flipByte(t, filepath.Join(cp.repoDir, "wal", f.seg[:16], f.seg))
		before := objectSums(t, cp.repoDir)
		v := cp.run(t, "verify")
		assertFailed(t, "verify", v, failed, "problem")
		if !strings.Contains(v.stdout, f.seg) {
			t.Errorf("verify does not name the damaged segment %s: %q", f.seg, v.stdout)
		}
		dest := filepath.Join(pgtest.TempDir(t), "RECOVERYXLOG")
		res := cp.run(t, "wal-fetch", f.seg, dest)
		assertFailed(t, "wal-fetch", res, fetchFailed, f.seg, "corrupt")
		assertEmptyDir(t, "wal-fetch", filepath.Dir(dest))
		assertKept(t, "verify and wal-fetch", before, objectSums(t, cp.repoDir), nil)
	})
	t.Run("manifest", func(t *testing.T) {
		cp := copyRepo(t, r, "")
		flipByte(t, filepath.Join(cp.repoDir, "backups", f.good, "manifest"))
		before := objectSums(t, cp.repoDir)
		v := cp.run(t, "verify", f.good)
		assertFailed(t, "verify", v, failed, "problem")
		if !strings.Contains(v.stdout, "manifest") {
			t.Errorf("verify does not name the manifest: %q", v.stdout)
		}
		dir := emptyDirFor(t)
		res := cp.run(t, "restore", "--pgdata", dir, "--backup", f.good)
		assertFailed(t, "restore", res, failed, "manifest", f.good)
		assertNoCluster(t, "restore", dir)
		assertKept(t, "verify and restore", before, objectSums(t, cp.repoDir), nil)
	})
	t.Run("summary", func(t *testing.T) {
		cp := copyRepo(t, r, "")
		sum := filepath.Join(cp.repoDir, "backups", f.good, "backup.json")
		data, _ := os.ReadFile(sum)
		os.WriteFile(sum, data[:len(data)/2], 0o640)
		before := objectSums(t, cp.repoDir)
		v := cp.run(t, "verify")
		assertFailed(t, "verify", v, failed, "problem")
		if !strings.Contains(v.stdout, f.good) || !strings.Contains(v.stdout, "summary") {
			t.Errorf("verify does not name the damaged summary: %q", v.stdout)
		}
		del := cp.run(t, "delete", "--retain-full", "1", "--debris-min-age", "0s")
		assertFailed(t, "delete", del, failed, f.good, "summary is corrupt")
		dir := emptyDirFor(t)
		res := cp.run(t, "restore", "--pgdata", dir, "--backup", f.second)
		assertFailed(t, "restore", res, failed, f.good, "summary is corrupt")
		assertEmptyDir(t, "restore", dir)
		assertKept(t, "verify, delete and restore", before, objectSums(t, cp.repoDir), nil)
	})
	t.Run("summary-manifest-sha256", func(t *testing.T) {
		cp := copyRepo(t, r, "")
		sum := filepath.Join(cp.repoDir, "backups", f.good, "backup.json")
		data, _ := os.ReadFile(sum)
		re := regexp.MustCompile(`"manifest_sha256": "[0-9a-f]{64}"`)
		if !re.Match(data) {
			t.Fatalf("no manifest_sha256 in %s", data)
		}
		os.WriteFile(sum, re.ReplaceAll(data, []byte(`"manifest_sha256": "`+strings.Repeat("0", 64)+`"`)), 0o640)
		before := objectSums(t, cp.repoDir)
		v := cp.run(t, "verify", f.good)
		assertFailed(t, "verify", v, failed, "problem")
		if !strings.Contains(v.stdout, "manifest") {
			t.Errorf("verify does not name the manifest mismatch: %q", v.stdout)
		}
		dir := emptyDirFor(t)
		res := cp.run(t, "restore", "--pgdata", dir, "--backup", f.good)
		assertFailed(t, "restore", res, failed, "manifest")
		assertNoCluster(t, "restore", dir)
		assertKept(t, "verify and restore", before, objectSums(t, cp.repoDir), nil)
	})
	t.Run("config.json", func(t *testing.T) {
		cp := copyRepo(t, r, "")
		cfg := filepath.Join(cp.repoDir, "config.json")
		data, _ := os.ReadFile(cfg)
		os.WriteFile(cfg, data[:len(data)/2], 0o640)
		before := objectSums(t, cp.repoDir)
		for _, c := range f.sixCommands(cp.env) {
			res, check := c.run(t)
			assertFailed(t, c.name, res, c.rule, "config.json")
			check(t)
		}
		assertKept(t, "every command", before, objectSums(t, cp.repoDir), nil)
	})
}

// names: hostile file names and backup IDs are refused, nothing is read or
// written outside the repository and the destination.
func (f *faultFixture) names(t *testing.T) {
	r := f.r
	long := strings.Repeat("0", 300)
	t.Run("wal-push", func(t *testing.T) {
		d := walDir(t)
		before := objectSums(t, r.repoDir)
		for _, p := range []string{"pg_wal/../../../../etc/passwd", "/etc/passwd", "pg_wal/" + long, "pg_wal/" + f.seg + "/..", "pg_wal/"} {
			res := runPgkeep(t, r.env, d, "wal-push", p)
			assertFailed(t, "wal-push "+p, res, pushFailed)
		}
		assertKept(t, "wal-push", before, objectSums(t, r.repoDir), nil)
	})
	t.Run("wal-fetch", func(t *testing.T) {
		before := objectSums(t, r.repoDir)
		for _, n := range []string{"../config.json", "../../../../etc/passwd", "/etc/passwd", long,
			f.seg + "/../../config.json", "wal/" + f.seg[:16] + "/" + f.seg, "../" + f.seg, ""} {
			dest := filepath.Join(pgtest.TempDir(t), "RECOVERYXLOG")
			res := r.run(t, "wal-fetch", n, dest)
			assertFailed(t, "wal-fetch "+n, res, fetchFailed, "not a WAL file name")
			assertEmptyDir(t, "wal-fetch "+n, filepath.Dir(dest))
		}
		assertKept(t, "wal-fetch", before, objectSums(t, r.repoDir), nil)
	})
	t.Run("backup-id", func(t *testing.T) {
		before := objectSums(t, r.repoDir)
		for _, id := range []string{"../" + f.good, f.good + "/../" + f.second, "..", "/etc", "a/b", `a\b`} {
			dir := emptyDirFor(t)
			// restore looks the ID up in the list of backups: not found.
			res := r.run(t, "restore", "--pgdata", dir, "--backup", id)
			assertFailed(t, "restore --backup "+id, res, failed, "backup "+id+": backup not found")
			for _, args := range [][]string{{"verify", id}, {"backup", "show", id}} {
				res := r.run(t, args...)
				assertFailed(t, strings.Join(args, " "), res, failed, "not a backup ID")
			}
			assertEmptyDir(t, "restore --backup "+id, dir)
		}
		assertKept(t, "hostile IDs", before, objectSums(t, r.repoDir), nil)
	})
}

// editSummary rewrites fields of a backup's backup.json.
func editSummary(t *testing.T, root, id string, set map[string]any) {
	t.Helper()
	p := filepath.Join(root, "backups", id, "backup.json")
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	for k, v := range set {
		m[k] = v
	}
	out, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(p, out, 0o640); err != nil {
		t.Fatal(err)
	}
}

// clock: times that jump change nothing that matters; order is by WAL.
func (f *faultFixture) clock(t *testing.T) {
	t.Run("backup-start-in-future", func(t *testing.T) {
		cp := copyRepo(t, f.r, "")
		editSummary(t, cp.repoDir, f.good, map[string]any{"start_time": "2099-01-01T00:00:00Z", "stop_time": "2099-01-01T00:05:00Z"})
		if rows := listBackups(t, cp); len(rows) != 2 || rows[0].ID != f.good || rows[1].ID != f.second {
			t.Fatalf("backup list with a future start time: %+v, want %s then %s (by LSN)", rows, f.good, f.second)
		}
		days := cp.run(t, "delete", "--retain-days", "1", "--dry-run")
		if days.code != 0 || strings.Contains(days.stdout, "backup ") {
			t.Errorf("--retain-days 1 with a future backup: exit %d %q %q", days.code, days.stdout, days.stderr)
		}
		del := cp.run(t, "delete", "--retain-full", "1")
		if del.code != 0 || !strings.Contains(del.stdout, "deleted backup "+f.good) || strings.Contains(del.stdout, f.second) {
			t.Fatalf("--retain-full 1 with a future backup: exit %d %q %q", del.code, del.stdout, del.stderr)
		}
		if rows := listBackups(t, cp); len(rows) != 1 || rows[0].ID != f.second {
			t.Fatalf("after delete: %+v", rows)
		}
		if v := cp.run(t, "verify", "--no-cache"); v.code != 0 {
			t.Errorf("verify after delete: %s%s", v.stdout, v.stderr)
		}
	})
	t.Run("debris-mtime-in-future", func(t *testing.T) {
		// The newer backup loses its summary (a kill between manifest and
		// summary) and its objects' times jump a year ahead.
		cp := copyRepo(t, f.r, "")
		// First the WAL older than both backups goes, as it would anyway.
		if res := cp.run(t, "delete", "--retain-full", "2"); res.code != 0 {
			t.Fatal(res.stderr)
		}
		bdir := filepath.Join(cp.repoDir, "backups", f.second)
		os.Remove(filepath.Join(bdir, "backup.json"))
		future := time.Now().Add(365 * 24 * time.Hour)
		filepath.Walk(bdir, func(p string, _ os.FileInfo, _ error) error { return os.Chtimes(p, future, future) })
		before := objectSums(t, cp.repoDir)
		del := cp.run(t, "delete", "--retain-full", "1")
		if del.code != 0 || strings.TrimSpace(del.stdout) != "" {
			t.Errorf("delete with debris from the future: exit %d %q %q", del.code, del.stdout, del.stderr)
		}
		assertKept(t, "delete", before, objectSums(t, cp.repoDir), nil)
		// Once its times are old, it is debris and goes; the kept backup
		// still verifies.
		past := time.Now().Add(-2 * time.Hour)
		filepath.Walk(bdir, func(p string, _ os.FileInfo, _ error) error { return os.Chtimes(p, past, past) })
		del = cp.run(t, "delete", "--retain-full", "1")
		if del.code != 0 || !strings.Contains(del.stdout, "deleted incomplete backup "+f.second) {
			t.Errorf("delete of old debris: exit %d %q %q", del.code, del.stdout, del.stderr)
		}
		if v := cp.run(t, "verify", "--no-cache"); v.code != 0 {
			t.Errorf("verify after delete: %s%s", v.stdout, v.stderr)
		}
	})
}

// startKillable starts pgkeep in the background; kill sends SIGKILL and
// waits.
func startKillable(t *testing.T, env []string, args ...string) (kill func()) {
	t.Helper()
	cmd := pgkeepCommand(t, env, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := false
	t.Cleanup(func() {
		if !done {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return func() {
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		done = true
	}
}

// startTermable starts pgkeep in the background; term sends SIGTERM and
// returns the result and how long the command took to exit after it.
func startTermable(t *testing.T, env []string, args ...string) (term func() (result, time.Duration)) {
	t.Helper()
	cmd := pgkeepCommand(t, env, args...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := false
	t.Cleanup(func() {
		if !done {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return func() (result, time.Duration) {
		cmd.Process.Signal(syscall.SIGTERM)
		sent := time.Now()
		timer := time.AfterFunc(time.Minute, func() { cmd.Process.Kill() })
		cmd.Wait()
		timer.Stop()
		done = true
		took := time.Since(sent)
		code := cmd.ProcessState.ExitCode()
		if code < 0 {
			code = 128 + int(cmd.ProcessState.Sys().(syscall.WaitStatus).Signal())
		}
		return result{code: code, stdout: so.String(), stderr: se.String()}, took
	}
}

// waitPath waits until a file matching glob exists.
func waitPath(t *testing.T, glob string, except string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		m, _ := filepath.Glob(glob)
		for _, p := range m {
			if except == "" || !strings.Contains(p, except) {
				return
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("nothing matched %s within a minute", glob)
}

func (f *faultFixture) kill(t *testing.T) {
	r := f.r
	t.Run("delete", func(t *testing.T) {
		for _, delay := range []time.Duration{0, 30 * time.Millisecond, 120 * time.Millisecond} {
			cp := copyRepo(t, r, "")
			kill := startKillable(t, cp.env, "delete", "--retain-full", "1", "--debris-min-age", "0s")
			time.Sleep(delay)
			kill()
			// The kept backup is intact whatever the moment; the other one
			// is either whole or gone from the list.
			rows := listBackups(t, cp)
			for _, b := range rows {
				if b.Status != "complete" {
					t.Errorf("after kill at %s: %+v", delay, rows)
				}
			}
			if v := cp.run(t, "verify", "--no-cache"); v.code != 0 {
				t.Errorf("verify after delete killed at %s: %s%s", delay, v.stdout, v.stderr)
			}
			again := cp.run(t, "delete", "--retain-full", "1", "--debris-min-age", "0s")
			if again.code != 0 {
				t.Errorf("delete after a killed delete: %s", again.stderr)
			}
			if rows := listBackups(t, cp); len(rows) != 1 || rows[0].ID != f.second {
				t.Errorf("after the second delete: %+v", rows)
			}
		}
	})
	t.Run("restore", func(t *testing.T) {
		dir := emptyDirFor(t)
		kill := startKillable(t, r.env, "restore", "--pgdata", dir, "--backup", f.good)
		waitPath(t, filepath.Join(dir, "base", "*"), "")
		kill()
		assertNoCluster(t, "killed restore", dir)
		res := r.run(t, "restore", "--pgdata", dir, "--backup", f.good)
		assertFailed(t, "restore into the killed restore's directory", res, failed, "not empty")
		if res := r.run(t, "restore", "--pgdata", dir, "--backup", f.good, "--force"); res.code != 0 {
			t.Fatalf("restore --force after a kill: %s", res.stderr)
		}
		if _, err := os.Stat(filepath.Join(dir, "global", "pg_control")); err != nil {
			t.Errorf("restore after a kill: %v", err)
		}
	})
}

// sigtermRestore: a restore stopped with SIGTERM while it writes exits
// within a second, says so in one line and leaves no cluster.
func (f *faultFixture) sigtermRestore(t *testing.T) {
	dir := emptyDirFor(t)
	term := startTermable(t, f.r.env, "restore", "--pgdata", dir, "--backup", f.good)
	waitPath(t, filepath.Join(dir, "base", "*"), "")
	res, took := term()
	assertFailed(t, "restore after SIGTERM", res, failed, "signal received")
	if took > sigtermBound {
		t.Errorf("restore took %s to stop after SIGTERM", took)
	}
	assertNoCluster(t, "restore after SIGTERM", dir)
}

func (f *faultFixture) concurrent(t *testing.T) {
	r := f.r
	t.Run("two-deletes", func(t *testing.T) {
		cp := copyRepo(t, r, "")
		var wg sync.WaitGroup
		res := make([]result, 2)
		for i := range res {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res[i] = cp.run(t, "delete", "--retain-full", "1", "--debris-min-age", "0s")
			}()
		}
		wg.Wait()
		for i, x := range res {
			if x.code != 0 {
				assertFailed(t, fmt.Sprintf("delete %d", i), x, failed)
			}
		}
		if res[0].code != 0 && res[1].code != 0 {
			t.Errorf("both concurrent deletes failed: %q %q", res[0].stderr, res[1].stderr)
		}
		if rows := listBackups(t, cp); len(rows) != 1 || rows[0].ID != f.second {
			t.Errorf("after two deletes: %+v", rows)
		}
		if v := cp.run(t, "verify", "--no-cache"); v.code != 0 {
			t.Errorf("verify after two deletes: %s%s", v.stdout, v.stderr)
		}
	})
	t.Run("backup+backup", func(t *testing.T) {
		before := listBackups(t, r)
		var wg sync.WaitGroup
		res := make([]result, 2)
		for i := range res {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res[i] = runPgkeep(t, envWith(r.env, f.conn()...), "", "backup")
			}()
		}
		wg.Wait()
		var ids []string
		for i, x := range res {
			if x.code != 0 {
				assertFailed(t, fmt.Sprintf("backup %d", i), x, failed)
				continue
			}
			ids = append(ids, strings.TrimSpace(x.stdout))
		}
		if len(ids) == 0 {
			t.Fatalf("both concurrent backups failed: %q %q", res[0].stderr, res[1].stderr)
		}
		if len(ids) == 2 && ids[0] == ids[1] {
			t.Fatalf("two backups got one ID %s", ids[0])
		}
		rows := listBackups(t, r)
		if countComplete(rows) != countComplete(before)+len(ids) {
			t.Errorf("backups after two concurrent ones: %+v", rows)
		}
		for _, id := range ids {
			if v := r.run(t, "verify", id); v.code != 0 {
				t.Errorf("verify %s: %s%s", id, v.stdout, v.stderr)
			}
		}
	})
}

// backupDirs is the set of backup IDs that have a directory in r.
func backupDirs(r *testRepo) map[string]bool {
	m := map[string]bool{}
	entries, _ := os.ReadDir(filepath.Join(r.repoDir, "backups"))
	for _, e := range entries {
		m[e.Name()] = true
	}
	return m
}

// waitNewBackup waits until a backup not in known has written file.
func waitNewBackup(t *testing.T, r *testRepo, known map[string]bool, file string) string {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		m, _ := filepath.Glob(filepath.Join(r.repoDir, "backups", "*", file))
		for _, p := range m {
			id := strings.Split(strings.TrimPrefix(p, filepath.Join(r.repoDir, "backups")+"/"), "/")[0]
			if !known[id] {
				return id
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("no new backup wrote %s within a minute", file)
	return ""
}

// killBackup: kill -9 of a backup right after its start record and while
// it waits for its WAL (the kill after its first pack is in
// TestBackupFaults). Each leaves an uncommitted backup that nothing lists
// as complete; PostgreSQL is not left in backup mode (the next backup
// works); delete keeps it while its heartbeat is fresh and removes it
// afterwards.
func (f *faultFixture) killBackup(t *testing.T) {
	r, c := f.r, f.c
	conn := c.Conn(t)
	defer conn.Close(context.Background())
	// Archiving is held off, so no killed backup can have committed.
	c.Exec(t, conn, "ALTER SYSTEM SET archive_command = 'false'")
	c.Exec(t, conn, "SELECT pg_reload_conf()")
	released := false
	release := func() {
		if !released {
			c.Exec(t, conn, "ALTER SYSTEM RESET archive_command")
			c.Exec(t, conn, "SELECT pg_reload_conf()")
			released = true
		}
	}
	defer release()
	completeBefore := countComplete(listBackups(t, r))
	var killed []string
	var lastKill time.Time
	for _, stage := range []string{"after-start-record", "wal-wait"} {
		t.Run(stage, func(t *testing.T) {
			known := backupDirs(r)
			before := objectSums(t, r.repoDir)
			kill := startKillable(t, envWith(r.env, f.conn()...), "backup")
			id := waitNewBackup(t, r, known, "started.json")
			if stage == "wal-wait" {
				waitInWALWait(t, c)
			}
			kill()
			lastKill = time.Now()
			killed = append(killed, id)
			rows := listBackups(t, r)
			if countComplete(rows) != completeBefore {
				t.Errorf("a killed backup is listed complete: %+v", rows)
			}
			for _, b := range rows {
				if b.ID == id && b.Status == "complete" {
					t.Errorf("killed backup %s listed complete", id)
				}
			}
			assertKept(t, "killed backup", before, objectSums(t, r.repoDir), func(n string) bool {
				if !strings.HasPrefix(n, "backups/"+id+"/") {
					return false
				}
				// The manifest is written while the backup waits for its
				// WAL; only backup.json, after the wait, lists it.
				return failedBackupDebris(n) || stage == "wal-wait" && filepath.Base(n) == "manifest"
			})
			dry := r.run(t, "delete", "--retain-full", "10", "--debris-min-age", "0s", "--dry-run")
			if dry.code != 0 || strings.Contains(dry.stdout, id) {
				t.Errorf("delete right after the kill would remove %s (its heartbeat is fresh): %q %q", id, dry.stdout, dry.stderr)
			}
		})
	}
	t.Run("sigterm-wal-wait", func(t *testing.T) {
		known := backupDirs(r)
		term := startTermable(t, envWith(r.env, f.conn()...), "backup")
		id := waitNewBackup(t, r, known, "started.json")
		waitInWALWait(t, c)
		res, took := term()
		assertFailed(t, "backup after SIGTERM", res, failed, "signal received")
		if took > sigtermBound {
			t.Errorf("backup took %s to stop after SIGTERM", took)
		}
		if strings.TrimSpace(res.stdout) != "" {
			t.Errorf("a stopped backup printed an ID: %q", res.stdout)
		}
		if _, err := os.Stat(filepath.Join(r.repoDir, "backups", id, "backup.json")); !os.IsNotExist(err) {
			t.Errorf("a backup stopped by SIGTERM committed (%v)", err)
		}
		lastKill = time.Now()
		killed = append(killed, id)
	})
	release()
	t.Run("next-backup-and-debris", func(t *testing.T) {
		id := takeBackup(t, r, c)
		if v := r.run(t, "verify", id); v.code != 0 {
			t.Errorf("verify of the backup after the kills: %s%s", v.stdout, v.stderr)
		}
		time.Sleep(time.Until(lastKill.Add(22 * time.Second))) // repo.RunningGrace and a margin
		del := r.run(t, "delete", "--retain-full", "10", "--debris-min-age", "0s")
		for _, k := range killed {
			if del.code != 0 || !strings.Contains(del.stdout, "deleted incomplete backup "+k) {
				t.Errorf("delete does not remove the killed backup %s: exit %d %q %q", k, del.code, del.stdout, del.stderr)
			}
		}
		if rows := listBackups(t, r); countComplete(rows) != len(rows) || len(rows) != completeBefore+1 {
			t.Errorf("after delete of the debris: %+v", rows)
		}
		if v := r.run(t, "verify"); v.code != 0 {
			t.Errorf("verify after delete of the debris: %s%s", v.stdout, v.stderr)
		}
	})
}

// sigtermBound is how soon a command must stop after SIGTERM: a second,
// plus scheduling slack for a 2-core machine running the whole suite.
const sigtermBound = 2 * time.Second

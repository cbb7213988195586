package e2e

// Helpers of the fault suite (docs/faults.md): what every row asserts
// about a failed command (exit code, one line naming the cause, no
// secret) and about the repository and data directory afterwards.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/pgkeep/pgkeep/internal/pgtest"
	"github.com/pgkeep/pgkeep/internal/s3test"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/s3"
)

// exitRule is what a row expects of a failed command's exit code.
type exitRule int

const (
	// failed: any non-zero code.
	failed exitRule = iota
	// pushFailed: wal-push's codes, 1..125 (126+ restarts the archiver).
	pushFailed
	// fetchFailed: wal-fetch failing for another reason than "not in the
	// archive": non-zero and not 1 (the exact code is wal-fetch's own
	// contract: 2 in standby mode, 126+ in archive recovery).
	fetchFailed
)

func (e exitRule) ok(code int) bool {
	switch e {
	case pushFailed:
		return code >= 1 && code <= 125
	case fetchFailed:
		return code != 0 && code != 1
	}
	return code != 0
}

func (e exitRule) String() string {
	return [...]string{"non-zero", "1..125", "non-zero and not 1"}[e]
}

// secrets are strings no output may contain.
var secrets = []string{"AGE-SECRET-KEY"}

// assertFailed checks a failed command: its exit code obeys rule, stderr
// ends in exactly one "pgkeep: " line that names every cause
// (case-insensitive), and no secret is printed.
func assertFailed(t *testing.T, what string, res result, rule exitRule, causes ...string) {
	t.Helper()
	if !rule.ok(res.code) {
		t.Errorf("%s: exit %d, want %s\nstdout: %s\nstderr: %s", what, res.code, rule, res.stdout, res.stderr)
	}
	assertMessage(t, what, res, causes...)
}

// assertMessage checks the one-line message of a failed command.
func assertMessage(t *testing.T, what string, res result, causes ...string) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(res.stderr, "\n"), "\n")
	var msgs []string
	for _, l := range lines {
		if strings.HasPrefix(l, "pgkeep: ") {
			msgs = append(msgs, l)
		}
	}
	if len(msgs) != 1 || lines[len(lines)-1] != msgs[0] {
		t.Errorf("%s: want exactly one \"pgkeep: \" line, last on stderr; stderr:\n%s", what, res.stderr)
		return
	}
	t.Logf("%s: exit %d: %s", what, res.code, msgs[0])
	msg := strings.ToLower(msgs[0])
	for _, c := range causes {
		if !strings.Contains(msg, strings.ToLower(c)) {
			t.Errorf("%s: message %q does not name the cause %q", what, msgs[0], c)
		}
	}
	for _, s := range secrets {
		if strings.Contains(res.stderr+res.stdout, s) {
			t.Errorf("%s: output contains a secret (%s…)", what, s)
		}
	}
}

// objectSums maps every object of an fs repository (not .tmp/, not the
// delete clock probe) to the SHA-256 of its bytes.
func objectSums(t *testing.T, root string) map[string]string {
	t.Helper()
	sums := map[string]string{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.IsDir() || strings.Contains(p, "/.tmp/") {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		s := sha256.Sum256(data)
		sums[rel] = hex.EncodeToString(s[:])
		return nil
	})
	if err != nil {
		t.Fatalf("read repository %s: %v", root, err)
	}
	return sums
}

// assertKept checks that every object of before is still there with the
// same bytes, and that every new object is one allowNew accepts (nil: no
// new object).
func assertKept(t *testing.T, what string, before, after map[string]string, allowNew func(string) bool) {
	t.Helper()
	for name, sum := range before {
		got, ok := after[name]
		switch {
		case !ok:
			t.Errorf("%s: %s was lost", what, name)
		case got != sum:
			t.Errorf("%s: %s was overwritten", what, name)
		}
	}
	for name := range after {
		if _, ok := before[name]; !ok && (allowNew == nil || !allowNew(name)) {
			t.Errorf("%s: %s appeared", what, name)
		}
	}
}

// failedBackupDebris accepts what a backup that failed may leave behind:
// its start record, heartbeat, packs (and their indexes), file maps and
// refs.json, never a summary or manifest.
func failedBackupDebris(name string) bool {
	if !strings.HasPrefix(name, "backups/") {
		return false
	}
	// Packs, their indexes (resume) and file maps are stored as the copy
	// goes; refs.json just before the manifest. None of them lists the
	// backup: only backup.json, after the manifest, does.
	base := filepath.Base(name)
	return base == "started.json" || base == "alive" || base == "refs.json" ||
		strings.Contains(name, "/pack/") || strings.Contains(name, "/index/") || strings.Contains(name, "/map/")
}

// s3Objects lists a bucket's objects with size and ETag: equal lists mean
// nothing was lost or replaced.
func s3Objects(t *testing.T, srv *s3test.Server, bucket string) string {
	t.Helper()
	var lines []string
	err := srv.Backend(t, bucket, "", s3.Options{}).List(context.Background(), "", func(o storage.ObjectInfo) error {
		lines = append(lines, fmt.Sprintf("%s %d %s", o.Name, o.Size, o.ETag))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// altRepo is r's configuration (keys and all) pointed at another
// repository root.
func altRepo(r *testRepo, root string) *testRepo {
	return &testRepo{kind: "fs", dir: r.dir, repoDir: root, config: r.config, identity: r.identity,
		env: append(append([]string{}, r.env...), "PGKEEP_REPOSITORY=file://"+root)}
}

// copyRepo copies r's repository (ownership and times kept) into a fresh
// directory, for destructive cases that must not change the shared one.
func copyRepo(t *testing.T, r *testRepo, parent string) *testRepo {
	t.Helper()
	if parent == "" {
		parent = pgtest.TempDir(t)
	}
	dst := filepath.Join(parent, "repo-copy")
	if out, err := exec.Command("cp", "-a", r.repoDir, dst).CombinedOutput(); err != nil {
		t.Fatalf("copy repository: %v %s", err, out)
	}
	return altRepo(r, dst)
}

// smallDisk mounts a tmpfs of mb MiB owned by postgres, unmounted at the
// end of the test.
func smallDisk(t *testing.T, mb int) string {
	t.Helper()
	dir := filepath.Join(pgtest.TempDir(t), "disk")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%dm,mode=0755", mb), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (needs root): %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			exec.Command("umount", "-l", dir).Run()
			t.Logf("umount %s: %v %s", dir, err, out)
		}
	})
	pgtest.Chown(t, dir)
	return dir
}

// fillDisk allocates a filler file on dir's file system leaving about
// free bytes, and returns a function that removes it.
func fillDisk(t *testing.T, dir string, free int64) func() {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	avail := int64(st.Bavail) * st.Bsize
	if avail <= free {
		t.Fatalf("%s has only %d bytes free", dir, avail)
	}
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, avail-free); err != nil {
		t.Fatalf("fill %s: %v", dir, err)
	}
	return func() { os.Remove(p) }
}

// assertNoCluster checks that a failed restore left nothing PostgreSQL
// would start: no global/pg_control.
func assertNoCluster(t *testing.T, what, dir string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dir, "global", "pg_control")); !os.IsNotExist(err) {
		t.Errorf("%s: a failed restore left global/pg_control in %s (err %v): PostgreSQL could start on a half-restored directory", what, dir, err)
	}
}

// assertEmptyDir checks that dir holds nothing (or is gone).
func assertEmptyDir(t *testing.T, what, dir string, except ...string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if !slicesContains(except, e.Name()) {
			t.Errorf("%s: %s left in %s", what, e.Name(), dir)
		}
	}
}

// chmodFor makes path mode for the rest of the subtest.
func chmodFor(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(path, fi.Mode().Perm()) })
}

// emptyDirFor is a fresh empty directory owned by postgres.
func emptyDirFor(t *testing.T) string {
	return pgtest.MkdirFor(t, filepath.Join(pgtest.TempDir(t), "target"))
}

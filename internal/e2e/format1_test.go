package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/pgtest"
)

// TestReadsFormat1RepositoryOfD5c0a40 opens a repository written by the
// previous release (d5c0a40: format 1 without a repository ID, recipients
// or bindings, manifests hashed the old way; testdata holds a backup of
// batch 1 and WAL up to batch 2). Today's pgkeep verifies it, restores it
// to the exact rows, binds it to the restored cluster's system at that
// cluster's first push, backs up into it and applies retention across both
// writers' backups.
func TestReadsFormat1RepositoryOfD5c0a40(t *testing.T) {
	r := fixtureRepo(t, "repo-format1-d5c0a40")

	if res := r.run(t, "verify"); res.code != 0 {
		t.Fatalf("verify of the previous release's repository: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	rows := listBackups(t, r)
	if len(rows) != 1 || rows[0].Status != "complete" {
		t.Fatalf("backups: %+v", rows)
	}
	old := rows[0].ID
	c := restoreAndStartConf(t, r, []string{"archive_mode = on", "max_wal_senders = 10",
		fmt.Sprintf("archive_command = '%s wal-push %%p'", pgkeepBin(t))})
	waitRecoveryDone(t, c, false)
	if got := batches(t, c); got != "1,2 rows=1000" {
		t.Fatalf("restored: %s", got)
	}
	// Its first push binds the repository to it; a backup of it follows.
	waitArchived(t, c, switchSegments(t, c, 1, 10), time.Minute)
	bound, err := os.ReadFile(filepath.Join(r.repoDir, "bind", "system-identifier"))
	if err != nil || len(strings.TrimSpace(string(bound))) == 0 {
		t.Fatalf("the first push did not bind the repository: %v", err)
	}
	fresh := takeBackup(t, r, c)
	if res := r.run(t, "delete", "--retain-full", "1"); res.code != 0 {
		t.Fatalf("delete: %s", res.stderr)
	}
	if rows := listBackups(t, r); len(rows) != 1 || rows[0].ID != fresh || rows[0].ID == old {
		t.Fatalf("after retention: %+v", rows)
	}
	if res := r.run(t, "verify"); res.code != 0 {
		t.Fatalf("verify after mixed writes: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
}

// fixtureRepo is a copy of testdata/<name>, a repository written by an
// earlier release, with a config naming it (owned by postgres, as the
// clusters restored from it run).
func fixtureRepo(t *testing.T, name string) *testRepo {
	t.Helper()
	dir := pgtest.TempDir(t)
	r := &testRepo{kind: "fs", dir: dir, repoDir: filepath.Join(dir, "repo")}
	if out, err := exec.Command("cp", "-a", filepath.Join("testdata", name), r.repoDir).CombinedOutput(); err != nil {
		t.Fatalf("copy the fixture: %v %s", err, out)
	}
	r.config = filepath.Join(dir, "pgkeep.yml")
	if err := os.WriteFile(r.config, []byte("repository: file://"+r.repoDir+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r.env = []string{"PGKEEP_CONFIG=" + r.config}
	pgtest.Chown(t, dir)
	return r
}

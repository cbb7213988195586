package maintain

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/storage/fs"
)

// emptyRepo is a fresh repository in a temporary directory.
func emptyRepo(t *testing.T) *repo.Repository {
	t.Helper()
	ctx := context.Background()
	b, err := fs.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Init(ctx, b, repo.InitOptions{CompressionLevel: 1, Now: time.Now()}); err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, b, repo.OpenOptions{CompressionLevel: -1})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// verify of a repository without backups, or of a backup it does not
// hold, fails with the cause and prints nothing.
func TestVerifyRefusesNothingToVerify(t *testing.T) {
	r := emptyRepo(t)
	var out bytes.Buffer
	o := VerifyOptions{NoCache: true, Concurrency: 2, Out: &out, Logger: slog.New(slog.DiscardHandler)}
	if err := Verify(t.Context(), r, o); err == nil || err.Error() != "verify: the repository holds no backup" {
		t.Fatalf("verify of an empty repository: %v", err)
	}
	o.BackupID = "20261122T180000Z-1a2b"
	if err := Verify(t.Context(), r, o); !errors.Is(err, repo.ErrBackupNotFound) {
		t.Fatalf("verify of an absent backup: %v", err)
	}
	o.BackupID = "../x"
	if err := Verify(t.Context(), r, o); err == nil {
		t.Fatal("verify accepted a malformed backup ID")
	}
	if out.Len() != 0 {
		t.Fatalf("printed %q", out.String())
	}
}

// Nothing to delete prints nothing; deleting an absent backup fails.
func TestDeleteNothing(t *testing.T) {
	r := emptyRepo(t)
	var out bytes.Buffer
	err := Delete(t.Context(), r, DeleteOptions{Retention: repo.RetentionOptions{RetainFull: 1, DebrisMinAge: time.Hour}, DryRun: true, Out: &out})
	if err != nil || out.Len() != 0 {
		t.Fatalf("dry run on an empty repository: %v, %q", err, out.String())
	}
	if err := Delete(t.Context(), r, DeleteOptions{BackupID: "20261122T180000Z-1a2b", Out: &out}); err == nil {
		t.Fatal("deleting an absent backup succeeded")
	}
}

// The plan's lines: one per backup, the kept ones, and the totals.
func TestPrintPlan(t *testing.T) {
	var out bytes.Buffer
	PrintPlan(&out, repo.RetentionPlan{
		Backups: []string{"b1"}, Debris: []string{"d1"}, Kept: []string{"k1"},
		WAL:         []string{"wal/0000000100000000/000000010000000000000001", "wal/0000000100000000/000000010000000000000003"},
		BackupBytes: 2048, WALBytes: 1024,
	}, "would delete", "retention: ")
	want := `retention: would delete backup b1
retention: would delete incomplete backup d1
retention: kept backup k1 (backup keep)
retention: would delete 1 backup(s) (2.0 KiB), 1 incomplete backup(s) (0 B) and 2 WAL file(s) (1.0 KiB): 3.0 KiB in all
retention: WAL would delete: 000000010000000000000001 .. 000000010000000000000003
`
	if got := out.String(); got != want {
		t.Fatalf("plan:\n%s\nwant:\n%s", got, want)
	}
	out.Reset()
	PrintPlan(&out, repo.RetentionPlan{Kept: []string{"k1"}}, "deleted", "")
	if got := out.String(); strings.Count(got, "\n") != 1 {
		t.Fatalf("nothing deleted but a kept backup: %q", got)
	}
}

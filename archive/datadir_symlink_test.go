package archive

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A data directory reached through a symlink (pgdata: /var/lib/postgresql/15/main
// linked to /data) is backed up whole, not as an empty backup; a
// directory that is no data directory is refused, not committed empty.
func TestBackupThroughSymlinkedDataDirectory(t *testing.T) {
	ctx := context.Background()
	dir, want := syntheticDataDir(t)
	link := filepath.Join(t.TempDir(), "main")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	r, _, _ := newMemRepo(t)
	m, err := writeBackup(ctx, r, smallBlocks(), testRun("20261201T000000Z-aaaa", link), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Files) != len(want) {
		t.Fatalf("backup through a symlink has %d files, want %d", len(m.Files), len(want))
	}

	empty := t.TempDir()
	os.WriteFile(filepath.Join(empty, "PG_VERSION"), []byte("15\n"), 0o600)
	_, err = writeBackup(ctx, r, smallBlocks(), testRun("20261201T000100Z-bbbb", empty), stopAt, discard())
	if err == nil || !strings.Contains(err.Error(), "no global/pg_control") {
		t.Fatalf("backup of a directory without pg_control: %v, want a refusal", err)
	}
	backups, _, err := r.ListBackups(ctx)
	if err != nil || len(backups) != 1 {
		t.Fatalf("listed %d backups (%v), want only the first", len(backups), err)
	}
}

// A tablespace whose location is itself a symlink is walked, not skipped.
func TestDataDirContentsSymlinkedTablespace(t *testing.T) {
	dir, _ := syntheticDataDir(t)
	loc := t.TempDir()
	writeFile(t, filepath.Join(loc, "PG_15_202209061", "16390", "16400"), make([]byte, 8192))
	locLink := filepath.Join(t.TempDir(), "tbs")
	if err := os.Symlink(loc, locLink); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "pg_tblspc"), 0o700)
	if err := os.Symlink(locLink, filepath.Join(dir, "pg_tblspc", "16390")); err != nil {
		t.Fatal(err)
	}
	files, _, tbs, _, err := dataDirContents(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(tbs) != 1 {
		t.Fatalf("tablespaces %+v", tbs)
	}
	found := false
	for _, f := range files {
		found = found || f.Rel == "pg_tblspc/16390/PG_15_202209061/16390/16400"
	}
	if !found {
		t.Fatalf("the tablespace's file is not in the backup")
	}
}

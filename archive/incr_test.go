package archive

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/storage"
)

// readBack decodes every file of backup id from the repository.
func readBack(t *testing.T, r *repo.Repository, id string) map[string][]byte {
	t.Helper()
	ctx := context.Background()
	m, err := r.ReadManifest(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, f := range m.Files {
		got := make([]byte, f.Size)
		for _, b := range f.Blocks {
			p := m.Packs[b.Pack]
			rc, err := r.ReadPack(ctx, p.Name, b.Offset, b.Length, p.Size)
			if err != nil {
				t.Fatalf("backup %s: %s: %v", id, f.Path, err)
			}
			obj, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				t.Fatal(err)
			}
			plain, _, err := r.DecodeBlock(nil, obj)
			if err != nil {
				t.Fatalf("backup %s: %s block at %d: %v", id, f.Path, b.FileOffset, err)
			}
			copy(got[b.FileOffset:], plain[b.ChunkOffset:b.ChunkOffset+b.Size])
		}
		out[f.Path] = got
	}
	return out
}

func sameFiles(t *testing.T, what string, got, want map[string][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d files, want %d", what, len(got), len(want))
	}
	for p, data := range want {
		if !bytes.Equal(got[p], data) {
			t.Errorf("%s: %s differs (%d bytes, want %d)", what, p, len(got[p]), len(data))
		}
	}
}

// ageFiles sets every file's mtime an hour back, as if written long
// before the backup.
func ageFiles(t *testing.T, dir string) {
	t.Helper()
	old := time.Now().Add(-time.Hour)
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			os.Chtimes(p, old, old)
		}
		return nil
	})
}

// incrRun is testRun on timeline 1, starting just past stopAt's stop: the
// LSN cross-check's window (the reference's stop, this start) then holds
// none of the LSNs the random synthetic pages have.
func incrRun(id, dir string) backupRun {
	run := testRun(id, dir)
	run.timeline = 1
	run.startLSN = 0x2000200
	return run
}

// An incremental stores only what changed, names the reference's packs
// for the rest, restores whole, and still does once the full is deleted.
func TestIncrementalStoresOnlyChanges(t *testing.T) {
	ctx := context.Background()
	r, fs, m := newMemRepo(t)
	dir, want := syntheticDataDir(t)
	ageFiles(t, dir)
	o := smallBlocks()
	full, err := writeBackup(ctx, r, o, incrRun("20261201T000000Z-aaaa", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	if full.Type != TypeFull || full.Reference != "" || full.Format != 6 || len(full.Maps) == 0 {
		t.Fatalf("first backup: type %q reference %q format %d maps %v; want a format 6 full with its file maps", full.Type, full.Reference, full.Format, full.Maps)
	}

	// One block of a large file changes, a file is added, one dropped.
	rel := "base/1/1259"
	p := filepath.Join(dir, filepath.FromSlash(rel))
	data := want[rel]
	copy(data[3*8192:], randomBytes(99, 100))
	writeFile(t, p, data)
	want["base/1/20000"] = randomBytes(7, 8192)
	writeFile(t, filepath.Join(dir, "base/1/20000"), want["base/1/20000"])
	os.Remove(filepath.Join(dir, "base/1/1259_fsm"))
	delete(want, "base/1/1259_fsm")

	before := len(fs.putNames())
	inc, err := writeBackup(ctx, r, o, incrRun("20261201T000100Z-bbbb", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	if inc.Type != TypeIncr || inc.Reference != full.ID || inc.Format != 6 {
		t.Fatalf("second backup: type %q reference %q format %d; want a format 6 incr of %s", inc.Type, inc.Reference, inc.Format, full.ID)
	}
	// Read: the changed file and the new one; the rest was taken unread.
	if wantRead := int64(len(want[rel]) + 8192); inc.BytesRead != wantRead {
		t.Errorf("incremental read %d bytes, want %d (the changed and the new file)", inc.BytesRead, wantRead)
	}
	// Stored: the changed block (2 pages) and the new file's, plus the manifest.
	var own int64
	for _, pk := range inc.Packs {
		if strings.HasPrefix(pk.Name, repo.BackupPrefix(inc.ID)) {
			own += pk.Size
		}
	}
	if own == 0 || own > 4*2*8192+4096 {
		t.Errorf("incremental stored %d bytes of packs; want about two blocks", own)
	}
	if fp := inc.Packs; len(fp) == 0 {
		t.Fatal("no packs")
	}
	var puts []string
	for _, n := range fs.putNames()[before:] {
		puts = append(puts, n)
	}
	if !contains(puts, "backups/"+inc.ID+"/refs.json") {
		t.Errorf("incremental wrote %v; want its refs.json", puts)
	}
	cfg, err := repo.ReadConfig(ctx, m)
	if err != nil || cfg.Format != 5 {
		t.Errorf("config format %d (%v) after an incremental naming the full's file maps; want 5", cfg.Format, err)
	}
	sameFiles(t, "incremental", readBack(t, r, inc.ID), want)

	// Delete the full: the incremental keeps what it references.
	if err := r.DeleteBackup(ctx, full.ID); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, "incremental after deleting its reference", readBack(t, r, inc.ID), want)
	restoreAndCompare(t, r, inc, want) // an incremental restores with the restore pipeline
	if probs := r.VerifyBackup(ctx, inc.ID); len(probs) != 0 {
		t.Errorf("verify after deleting the full: %v", probs)
	}

	// A third backup references the second; deleting the second leaves
	// the third whole, and packs nobody references go.
	ageFiles(t, dir)
	third, err := writeBackup(ctx, r, o, incrRun("20261201T000200Z-cccc", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	if third.Reference != inc.ID {
		t.Fatalf("third backup references %q, want %s", third.Reference, inc.ID)
	}
	if err := r.DeleteBackup(ctx, inc.ID); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, "third after deleting the second", readBack(t, r, third.ID), want)
	// The changed block of base/1/1259 in the full is referenced by no one.
	thirdM, err := r.ReadManifest(ctx, third.ID)
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, f := range thirdM.Files {
		for _, b := range f.Blocks {
			used[thirdM.Packs[b.Pack].Name] = true
		}
	}
	for _, p := range thirdM.Maps { // the file maps it names (format 4)
		used[p.Name] = true
	}
	var left []string
	m.List(ctx, "backups/", func(o storage.ObjectInfo) error {
		if !strings.HasPrefix(o.Name, repo.BackupPrefix(third.ID)) {
			left = append(left, o.Name)
		}
		return nil
	})
	if len(left) == 0 {
		t.Fatal("nothing of the deleted backups is left; the third references their packs")
	}
	for _, n := range left {
		if !used[n] {
			t.Errorf("%s is left after deleting its backup, and the kept backup does not use it", n)
		}
	}
}

// A change whose mtime was set back is missed by incr and caught by
// checksum.
func TestChecksumCatchesMTimeSetBack(t *testing.T) {
	ctx := context.Background()
	r, _, _ := newMemRepo(t)
	dir, want := syntheticDataDir(t)
	ageFiles(t, dir)
	o := smallBlocks()
	full, err := writeBackup(ctx, r, o, incrRun("20261201T000000Z-aaaa", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	rel := "pg_xact/0000"
	p := filepath.Join(dir, filepath.FromSlash(rel))
	info, _ := os.Stat(p)
	want[rel] = randomBytes(42, len(want[rel]))
	writeFile(t, p, want[rel])
	os.Chtimes(p, info.ModTime(), info.ModTime())

	inc, err := writeBackup(ctx, r, o, incrRun("20261201T000100Z-bbbb", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	if got := readBack(t, r, inc.ID)[rel]; bytes.Equal(got, want[rel]) {
		t.Fatal("incr read a file whose size and mtime did not change; the test wants it taken unread")
	}
	o.Type = TypeChecksum
	chk, err := writeBackup(ctx, r, o, incrRun("20261201T000200Z-cccc", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	if chk.Type != TypeChecksum || chk.BytesRead != chk.DataSize {
		t.Errorf("checksum backup: type %q read %d of %d bytes; want every byte read", chk.Type, chk.BytesRead, chk.DataSize)
	}
	sameFiles(t, "checksum backup", readBack(t, r, chk.ID), want)
	_ = full
}

// A reference on another timeline is not trusted by mtime.
func TestTimelineSwitchForcesChecksum(t *testing.T) {
	ctx := context.Background()
	r, _, _ := newMemRepo(t)
	dir, _ := syntheticDataDir(t)
	ageFiles(t, dir)
	o := smallBlocks()
	if _, err := writeBackup(ctx, r, o, incrRun("20261201T000000Z-aaaa", dir), stopAt, discard()); err != nil {
		t.Fatal(err)
	}
	run := incrRun("20261201T000100Z-bbbb", dir)
	run.timeline = 2
	inc, err := writeBackup(ctx, r, o, run, stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	if inc.Type != TypeChecksum || inc.BytesRead != inc.DataSize {
		t.Errorf("after a timeline switch: type %q, read %d of %d; want checksum, every byte read", inc.Type, inc.BytesRead, inc.DataSize)
	}
}

// A reference taken from another data directory (another Patroni member,
// or this host's directory at another path) is not trusted by mtime:
// another member's file can carry the very mtime a restore gave it. The
// same directory again is.
func TestOtherDataDirectoryForcesChecksum(t *testing.T) {
	ctx := context.Background()
	r, _, _ := newMemRepo(t)
	dir, _ := syntheticDataDir(t)
	ageFiles(t, dir)
	o := smallBlocks()
	run := incrRun("20261201T000000Z-aaaa", dir)
	run.host = "member-1"
	if _, err := writeBackup(ctx, r, o, run, stopAt, discard()); err != nil {
		t.Fatal(err)
	}
	// The same files under another path: a symlink to dir.
	link := filepath.Join(t.TempDir(), "pgdata")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		host, pgdata, want string
	}{
		{"member-2", dir, TypeChecksum},
		{"member-2", dir, TypeIncr}, // its reference is now member-2's own backup
		{"member-2", link, TypeChecksum},
		{"member-2", link, TypeIncr},
	} {
		run := incrRun(fmt.Sprintf("20261201T00%02d00Z-bbbb", i+1), tc.pgdata)
		run.host = tc.host
		inc, err := writeBackup(ctx, r, o, run, stopAt, discard())
		if err != nil {
			t.Fatal(err)
		}
		if inc.Type != tc.want {
			t.Errorf("backup %d on %s:%s after one of %s: type %q, want %q", i+1, tc.host, tc.pgdata, inc.Reference, inc.Type, tc.want)
		}
	}
}

// A relation page newer than the reference's stop and older than this
// backup's start in a file taken unread is an error, not a silent stale
// copy; one at or past this backup's start (written after the file was
// looked at) is not.
func TestLSNCrossCheck(t *testing.T) {
	ctx := context.Background()
	r, _, _ := newMemRepo(t)
	dir, _ := syntheticDataDir(t)
	rel := filepath.Join(dir, "base/1/30000")
	writeFile(t, rel, append(page(0x1000000, 0, true), page(0x1000000, 1, true)...))
	ageFiles(t, dir)
	o := smallBlocks()
	run := incrRun("20261201T000000Z-aaaa", dir)
	run.startLSN = 0x2000028
	os.Remove(filepath.Join(dir, "base/1/1259")) // random bytes: no page LSNs
	os.Remove(filepath.Join(dir, "base/1/1259_fsm"))
	if _, err := writeBackup(ctx, r, o, run, stopAt, discard()); err != nil {
		t.Fatal(err)
	}
	info, _ := os.Stat(rel)
	writeFile(t, rel, append(page(0x1000000, 0, true), page(0x3000000, 1, true)...))
	os.Chtimes(rel, info.ModTime(), info.ModTime())
	run = incrRun("20261201T000100Z-bbbb", dir)
	run.startLSN = 0x3000000
	if _, err := writeBackup(ctx, r, o, run, stopAt, discard()); err != nil {
		t.Fatalf("incr over a page as new as its own start: %v; want no error (WAL replay redoes it)", err)
	}
	run = incrRun("20261201T000100Z-bbbc", dir)
	run.startLSN = 0x4000028
	_, err := writeBackup(ctx, r, o, run, stopAt, discard())
	if err == nil || !strings.Contains(err.Error(), "base/1/30000") || !strings.Contains(err.Error(), "--type checksum") {
		t.Fatalf("incr over a page newer than the reference: %v; want the LSN cross-check's error", err)
	}
	o.Type = TypeChecksum
	if _, err := writeBackup(ctx, r, o, incrRun("20261201T000200Z-cccc", dir), stopAt, discard()); err != nil {
		t.Fatalf("checksum backup: %v", err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// A backup that has named its reference in its start record keeps every
// pack of that reference through a delete of it (it may already have read
// the manifest); once no one names them, a later delete removes them.
func TestDeleteKeepsPacksOfARunningBackupsReference(t *testing.T) {
	ctx := context.Background()
	r, _, m := newMemRepo(t)
	dir, _ := syntheticDataDir(t)
	full, err := writeBackup(ctx, r, smallBlocks(), incrRun("20261201T000000Z-aaaa", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	packsLeft := func() int {
		n := 0
		m.List(ctx, repo.BackupPrefix(full.ID)+"pack/", func(storage.ObjectInfo) error { n++; return nil })
		return n
	}
	running := "20261201T000100Z-bbbb"
	if err := r.MarkBackupStarted(ctx, running, repo.StartRecord{StartLSN: "0/3000028", SegmentSize: 16 << 20, Time: time.Now(), Reference: full.ID}); err != nil {
		t.Fatal(err)
	}
	if err := r.DeleteBackup(ctx, full.ID); err != nil {
		t.Fatal(err)
	}
	if got := packsLeft(); got != len(full.Packs) {
		t.Fatalf("%d of %d packs left after deleting the reference of a running backup; want all", got, len(full.Packs))
	}
	if _, err := r.ReadManifest(ctx, full.ID); err == nil {
		t.Fatal("the deleted backup's manifest is still readable")
	}
	_, debris, err := r.ListBackups(ctx)
	if err != nil || len(debris) != 1 || debris[0] != running {
		t.Fatalf("debris %v (%v); want only the running backup, not the deleted one's kept packs", debris, err)
	}
	// While they are in use, retention does not offer them as debris.
	plan, err := r.PlanRetention(ctx, repo.RetentionOptions{RetainFull: 1, Now: time.Now()})
	if err != nil || slices.Contains(plan.Debris, full.ID) {
		t.Fatalf("retention plan %+v (%v) deletes the packs a running backup may reference", plan, err)
	}
	// The running backup fails and is removed; the packs are no one's now,
	// and retention removes them.
	if err := r.DeleteBackup(ctx, running); err != nil {
		t.Fatal(err)
	}
	plan, err = r.PlanRetention(ctx, repo.RetentionOptions{RetainFull: 1, Now: time.Now()})
	if err != nil || !slices.Contains(plan.Debris, full.ID) || plan.DebrisBytes == 0 {
		t.Fatalf("retention plan %+v (%v); want the deleted backup's unreferenced packs as debris", plan, err)
	}
	if err := r.ApplyRetention(ctx, plan); err != nil {
		t.Fatal(err)
	}
	var left []string
	m.List(ctx, repo.BackupPrefix(full.ID), func(o storage.ObjectInfo) error { left = append(left, o.Name); return nil })
	if len(left) != 0 {
		t.Fatalf("objects of the deleted backup left that nothing references: %v", left)
	}
}

// verify reports a bad block of a shared pack under every backup that
// references it.
func TestVerifyReportsEveryBackupOfABadSharedBlock(t *testing.T) {
	ctx := context.Background()
	r, _, m := newMemRepo(t)
	dir, _ := syntheticDataDir(t)
	ageFiles(t, dir)
	o := smallBlocks()
	full, err := writeBackup(ctx, r, o, incrRun("20261201T000000Z-aaaa", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	inc, err := writeBackup(ctx, r, o, incrRun("20261201T000100Z-bbbb", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	if inc.StoredSize >= full.StoredSize/2 {
		t.Fatalf("incremental of an unchanged directory stored %d bytes (full %d)", inc.StoredSize, full.StoredSize)
	}
	name := full.Packs[0].Name
	rc, err := m.Get(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(rc)
	rc.Close()
	data[len(data)/2] ^= 0xff
	if err := m.Put(ctx, name, bytes.NewReader(data), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	rep, err := r.Verify(ctx, repo.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bad := map[string]bool{}
	for _, p := range rep.Problems {
		if strings.Contains(p.What, name) {
			bad[p.Backup] = true
		}
	}
	if !bad[full.ID] || !bad[inc.ID] {
		t.Errorf("problems %v; want the bad block of %s reported for %s and %s", rep.Problems, name, full.ID, inc.ID)
	}
}

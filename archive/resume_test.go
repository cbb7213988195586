package archive

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/mem"
)

// objectsUnder lists the objects of the in-memory store under prefix,
// with their sizes.
func objectsUnder(t *testing.T, m *mem.Backend, prefix string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	if err := m.List(context.Background(), prefix, func(o storage.ObjectInfo) error {
		out[o.Name] = o.Size
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// A backup whose writer fails late leaves packs and their indexes; the
// next backup reuses every stored block whose hash matches what it reads
// now (a block changed since, with its mtime set back, is stored again),
// names the interrupted backup's packs, stores a fraction of a full,
// restores byte for byte and verifies; retention then removes the
// interrupted backup's debris but the packs the new backup names.
func TestResumeReusesAnInterruptedBackupsBlocks(t *testing.T) {
	ctx := context.Background()
	dir, want := syntheticDataDir(t)
	big := "base/1/3000"
	want[big] = randomBytes(11, 400*8192) // 3.2 MB: 8 KiB blocks
	writeFile(t, filepath.Join(dir, big), want[big])
	o := smallBlocks()
	o.PackSize = 64 << 10

	// What a clean full stores, in a repository of its own.
	cr, _, _ := newMemRepo(t)
	clean, err := writeBackup(ctx, cr, o, testRun("20261201T000000Z-0000", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	fullBytes, fullPacks := ownPackBytes(clean), len(clean.Packs)

	r, fs, m := newMemRepo(t)
	first := "20261201T000000Z-aaaa"
	failAt := repo.PackName(first, fullPacks*8/10)
	fs.failName, fs.readN = failAt, 1000
	if _, err := writeBackup(ctx, r, o, testRun(first, dir), stopAt, discard()); !errors.Is(err, errInjected) {
		t.Fatalf("first backup: %v, want the injected failure of %s", err, failAt)
	}
	stored := objectsUnder(t, m, repo.BackupPrefix(first)+"pack/")
	indexes := objectsUnder(t, m, repo.BackupPrefix(first)+"index/")
	var storedBytes int64
	for _, n := range stored {
		storedBytes += n
	}
	// A pack the other writer closed as the failure stopped the backup
	// may lack its index.
	if len(stored) < fullPacks/2 || len(indexes) < len(stored)-o.Writers {
		t.Fatalf("the failed backup left %d packs and %d indexes (a full has %d packs); want most packs, each with its index", len(stored), len(indexes), fullPacks)
	}
	for name := range indexes {
		if _, ok := stored[strings.Replace(name, "/index/", "/pack/", 1)]; !ok {
			t.Errorf("index %s is stored, its pack is not", name)
		}
	}

	// A block the failed backup stored changes; its mtime is set back, so
	// only its hash can tell.
	rb, err := r.ReadResumeBlocks(ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(rb.Files[big], func(b repo.BlockRef) bool { return b.FileOffset == 5*8192 }) {
		t.Fatalf("the failed backup's indexes do not hold block 5 of %s; the test changes that block", big)
	}
	p := filepath.Join(dir, big)
	st, _ := os.Stat(p)
	copy(want[big][5*8192:], randomBytes(12, 100))
	writeFile(t, p, want[big])
	os.Chtimes(p, st.ModTime(), st.ModTime())

	second, err := writeBackup(ctx, r, o, testRun("20261201T000100Z-bbbb", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	own := ownPackBytes(second)
	t.Logf("clean full: %d bytes in %d packs; failed backup stored %d bytes in %d packs; the next stored %d, reused %d", fullBytes, fullPacks, storedBytes, len(stored), own, second.BytesResumed)
	if !slices.Equal(second.Resumed, []string{first}) || second.BytesResumed == 0 {
		t.Fatalf("second backup resumed %v (%d bytes); want %s", second.Resumed, second.BytesResumed, first)
	}
	if own > fullBytes-storedBytes*9/10 || own*2 > fullBytes {
		t.Errorf("the backup after the failed one stored %d bytes of packs; a full stores %d and %d were stored already", own, fullBytes, storedBytes)
	}
	var named int
	for _, pk := range second.Packs {
		if strings.HasPrefix(pk.Name, repo.BackupPrefix(first)) {
			named++
		}
	}
	if named == 0 {
		t.Fatal("the manifest names none of the failed backup's packs")
	}
	sameFiles(t, "backup after the failed one", readBack(t, r, second.ID), want)
	if f := fileOf(t, second, big); f != nil {
		for _, b := range f.Blocks {
			if b.FileOffset == 5*8192 && strings.HasPrefix(second.Packs[b.Pack].Name, repo.BackupPrefix(first)) {
				t.Error("the changed block was taken from the failed backup")
			}
		}
	}
	if left := objectsUnder(t, m, repo.BackupPrefix(second.ID)+"index/"); len(left) != 0 {
		t.Errorf("the committed backup kept its pack indexes %v", left)
	}
	restoreAndCompare(t, r, second, want)
	verifyClean(t, r)

	// Retention: the failed backup is debris; what the new backup names stays.
	plan, err := r.PlanRetention(ctx, repo.RetentionOptions{RetainFull: 1, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(plan.Debris, first) {
		t.Fatalf("retention plan %+v does not remove the failed backup's debris", plan)
	}
	if err := r.ApplyRetention(ctx, plan); err != nil {
		t.Fatal(err)
	}
	left := objectsUnder(t, m, repo.BackupPrefix(first))
	for name := range left {
		if !slices.ContainsFunc(second.Packs, func(p repo.Pack) bool { return p.Name == name }) {
			t.Errorf("after retention %s is left of the failed backup, and the new backup does not name it", name)
		}
	}
	if len(left) != named {
		t.Errorf("after retention %d objects of the failed backup are left, want the %d packs the new backup names", len(left), named)
	}
	sameFiles(t, "backup after retention", readBack(t, r, second.ID), want)
	verifyClean(t, r)
	if _, debris, _ := r.ListBackups(ctx); len(debris) != 0 {
		t.Errorf("debris %v listed after retention", debris)
	}
}

// While a running backup's start record names an interrupted backup to
// resume, deleting the interrupted one keeps all its packs (and indexes),
// and removes its start record first: a backup starting after that does
// not resume it (docs/format.md "Why this is safe with delete").
func TestDeleteKeepsPacksOfABackupBeingResumed(t *testing.T) {
	ctx := context.Background()
	dir, _ := syntheticDataDir(t)
	writeFile(t, filepath.Join(dir, "base/1/3000"), randomBytes(11, 200*8192))
	o := smallBlocks()
	r, fs, m := newMemRepo(t)
	first := "20261201T000000Z-aaaa"
	fs.failName, fs.readN = repo.PackName(first, 10), 1000
	if _, err := writeBackup(ctx, r, o, testRun(first, dir), stopAt, discard()); !errors.Is(err, errInjected) {
		t.Fatalf("first backup: %v, want the injected failure", err)
	}
	if got, err := r.UnfinishedBackups(ctx, "7"); err != nil || !slices.Equal(got, []string{first}) {
		t.Fatalf("unfinished backups %v (%v); want the failed one", got, err)
	}
	if got, _ := r.UnfinishedBackups(ctx, "8"); len(got) != 0 {
		t.Errorf("a backup of another system would resume %v", got)
	}
	packs := objectsUnder(t, m, repo.BackupPrefix(first)+"pack/")
	indexes := objectsUnder(t, m, repo.BackupPrefix(first)+"index/")

	// A running backup that resumes it.
	running := "20261201T000100Z-bbbb"
	if err := r.MarkBackupStarted(ctx, running, repo.StartRecord{StartLSN: "0/3000028", SegmentSize: 16 << 20, Time: time.Now().UTC(),
		SystemIdentifier: "7", Resume: []string{first}}); err != nil {
		t.Fatal(err)
	}
	hb, err := r.StartHeartbeat(ctx, running)
	if err != nil {
		t.Fatal(err)
	}
	defer hb.Stop()
	plan, err := r.PlanRetention(ctx, repo.RetentionOptions{RetainFull: 1, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(plan.Debris, first) || slices.Contains(plan.Debris, running) {
		t.Fatalf("retention plan %+v: want the failed backup's debris, not the running one", plan)
	}
	if err := r.ApplyRetention(ctx, plan); err != nil {
		t.Fatal(err)
	}
	left := objectsUnder(t, m, repo.BackupPrefix(first))
	for name := range packs {
		if _, ok := left[name]; !ok {
			t.Errorf("%s was deleted while a running backup resumes its backup", name)
		}
	}
	for name := range indexes {
		if _, ok := left[name]; !ok {
			t.Errorf("%s was deleted while a running backup resumes its backup", name)
		}
	}
	if _, ok := left[repo.BackupPrefix(first)+"started.json"]; ok {
		t.Error("the deleted backup's start record is left")
	}
	// A backup starting now does not take it: it is being deleted.
	if _, err := r.ReadResumeBlocks(ctx, first); err == nil {
		t.Error("the blocks of a backup whose start record is gone can still be read for resume")
	}
	if got, _ := r.UnfinishedBackups(ctx, "7"); len(got) != 0 {
		t.Errorf("unfinished backups %v after the delete; want none", got)
	}
}

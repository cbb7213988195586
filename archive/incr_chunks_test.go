package archive

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/restore"
	"github.com/pgkeep/pgkeep/storage"
)

// ownPackBytes is what backup m stored in packs of its own.
func ownPackBytes(m *repo.Manifest) int64 {
	var n int64
	for _, p := range m.Packs {
		if strings.HasPrefix(p.Name, repo.BackupPrefix(m.ID)) {
			n += p.Size
		}
	}
	return n
}

// restoreAndCompare restores backup id with the restore pipeline and
// checks every file against want, byte for byte.
func restoreAndCompare(t *testing.T, r *repo.Repository, m *repo.Manifest, want map[string][]byte) string {
	t.Helper()
	ctx := context.Background()
	wf, _ := pg.ParseWALFileName(m.StopWAL)
	seg := make([]byte, m.SegmentSize)
	if _, err := r.PutWAL(ctx, wf, bytes.NewReader(seg), int64(len(seg))); err != nil && !strings.Contains(err.Error(), "already") {
		t.Logf("put WAL: %v", err)
	}
	pgdata := filepath.Join(t.TempDir(), "restored")
	if _, err := restore.Backup(ctx, r, restore.BackupOptions{PGData: pgdata, BackupID: m.ID, NoRecoveryConfig: true}); err != nil {
		t.Fatalf("restore %s: %v", m.ID, err)
	}
	for rel, data := range want {
		got, err := os.ReadFile(filepath.Join(pgdata, filepath.FromSlash(rel)))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("restore of %s: %s differs (%d bytes, want %d, %v)", m.ID, rel, len(got), len(data), err)
		}
	}
	return pgdata
}

func verifyClean(t *testing.T, r *repo.Repository) {
	t.Helper()
	rep, err := r.Verify(context.Background(), repo.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range rep.Problems {
		if !strings.Contains(p.What, "WAL") && !strings.Contains(p.What, "wal") {
			t.Errorf("verify: %s: %s", p.Backup, p.What)
		}
	}
}

// Format 3: a large file is cut into small blocks stored in chunks, so an
// incremental after a one-page change stores about one small block, not
// the 4 MiB block around it; blocks changed together share one chunk;
// every backup restores byte for byte and verifies, also after the full
// is deleted (its chunks stay while the incrementals reference them).
func TestSmallBlocksStoreAPageChange(t *testing.T) {
	ctx := context.Background()
	r, _, mb := newMemRepo(t)
	dir, want := syntheticDataDir(t)
	rel := "base/1/30000"
	const size = 64 << 20
	want[rel] = randomBytes(42, size) // incompressible: stored bytes are what was stored
	writeFile(t, filepath.Join(dir, filepath.FromSlash(rel)), want[rel])
	ageFiles(t, dir)
	o := BackupOptions{Workers: 2, Writers: 2}.withDefaults()

	full, err := writeBackup(ctx, r, o, incrRun("20261201T000000Z-aaaa", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	if full.Format != 6 {
		t.Fatalf("full with a 64 MiB file: format %d, want 6 (small blocks, binary file maps)", full.Format)
	}
	big := fileOf(t, full, rel)
	if big.BlockSize != 16<<10 || len(big.Blocks) != size/(16<<10) {
		t.Fatalf("%s: block size %d, %d blocks; want 16 KiB blocks", rel, big.BlockSize, len(big.Blocks))
	}
	for _, b := range big.Blocks[:3] {
		if b.Hash != repo.HashXXH3 {
			t.Fatalf("%s: block hash kind %d; want xxh3-128 (format 3)", rel, b.Hash)
		}
	}
	objects := map[[2]int64]bool{}
	for _, b := range big.Blocks {
		objects[[2]int64{int64(b.Pack), b.Offset}] = true
	}
	if len(objects) != size/chunkPlainSize {
		t.Errorf("%s: %d objects for %d blocks; want one chunk per MiB", rel, len(objects), len(big.Blocks))
	}

	// One page changes.
	change := func(off int64, seed uint64) {
		copy(want[rel][off:], randomBytes(seed, pg.BlockSize))
		writeFile(t, filepath.Join(dir, filepath.FromSlash(rel)), want[rel])
	}
	change(40<<20+8192, 7)
	inc1, err := writeBackup(ctx, r, o, incrRun("20261201T000100Z-bbbb", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	if inc1.Type != TypeIncr || inc1.Format != 6 || inc1.BytesRead != size {
		t.Fatalf("incremental: type %q format %d read %d; want a format 6 incr (a binary patch map) that read the changed file", inc1.Type, inc1.Format, inc1.BytesRead)
	}
	if f := fileOf(t, inc1, rel); f.Map == nil || !f.Map.Patch {
		t.Errorf("the changed file's map is %+v; want a patch of the full's", f.Map)
	}
	if own := ownPackBytes(inc1); own == 0 || own > 64<<10+4096 {
		t.Errorf("a one-page change stored %d bytes of packs; want about one 16 KiB block", own)
	}
	t.Logf("one-page change: %d bytes of packs, %d bytes stored with the manifest (full: %d)", ownPackBytes(inc1), inc1.StoredSize, full.StoredSize)

	// Two pages of one chunk's range change: one object holds both blocks.
	change(8<<20+3*8192, 8)
	change(8<<20+500<<10, 9)
	inc2, err := writeBackup(ctx, r, o, incrRun("20261201T000200Z-cccc", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	var fresh []repo.BlockRef
	for _, b := range fileOf(t, inc2, rel).Blocks {
		if strings.HasPrefix(inc2.Packs[b.Pack].Name, repo.BackupPrefix(inc2.ID)) {
			fresh = append(fresh, b)
		}
	}
	if len(fresh) != 2 || fresh[0].Offset != fresh[1].Offset || fresh[0].ChunkOffset != 0 || fresh[1].ChunkOffset != 16<<10 {
		t.Errorf("two changed blocks of one range stored as %+v; want one chunk of both", fresh)
	}
	if own := ownPackBytes(inc2); own > 2*16<<10+4096 {
		t.Errorf("a two-page change stored %d bytes of packs; want about two 16 KiB blocks", own)
	}
	got := readBack(t, r, inc2.ID)
	sameFiles(t, "incremental after two page changes", got, want)
	pgdata := restoreAndCompare(t, r, inc2, want)
	verifyClean(t, r)

	// Delta restore over a copy with one page changed rewrites one block
	// (its xxh3 differs), taken out of its chunk.
	local := filepath.Join(pgdata, filepath.FromSlash(rel))
	data, _ := os.ReadFile(local)
	copy(data[20<<20:], randomBytes(11, 100))
	writeFile(t, local, data)
	os.Remove(filepath.Join(pgdata, "postmaster.pid"))
	res, err := restore.Backup(ctx, r, restore.BackupOptions{PGData: pgdata, BackupID: inc2.ID, NoRecoveryConfig: true, Delta: true})
	if err != nil {
		t.Fatalf("delta restore: %v", err)
	}
	if data, _ := os.ReadFile(local); !bytes.Equal(data, want[rel]) {
		t.Errorf("delta restore: %s differs", rel)
	}
	if res.BytesWritten > 64<<10 {
		t.Errorf("delta restore over one changed page wrote %d bytes; want about one 16 KiB block (plus small files)", res.BytesWritten)
	}

	// The full goes; its chunks stay while the incrementals name them.
	if err := r.DeleteBackup(ctx, full.ID); err != nil {
		t.Fatal(err)
	}
	restoreAndCompare(t, r, inc2, want)
	verifyClean(t, r)

	// Then the first incremental: what is left of both is what inc2 uses.
	if err := r.DeleteBackup(ctx, inc1.ID); err != nil {
		t.Fatal(err)
	}
	restoreAndCompare(t, r, inc2, want)
	verifyClean(t, r)
	used := map[string]bool{}
	for _, f := range inc2.Files {
		for _, b := range f.Blocks {
			used[inc2.Packs[b.Pack].Name] = true
		}
	}
	for _, p := range inc2.Maps {
		used[p.Name] = true
	}
	var left []string
	mb.List(ctx, "backups/", func(o storage.ObjectInfo) error {
		if !strings.HasPrefix(o.Name, repo.BackupPrefix(inc2.ID)) {
			left = append(left, o.Name)
		}
		return nil
	})
	if len(left) == 0 {
		t.Fatal("nothing of the deleted backups is left; the kept one references the full's chunks")
	}
	for _, n := range left {
		if !used[n] {
			t.Errorf("%s is left after deleting its backup, and the kept backup does not use it", n)
		}
	}
}

// A reference written before format 3 (whole 4 MiB blocks of a large
// file, format 1) still serves an incremental: the unchanged file keeps
// its whole blocks unread, a changed one is cut into small blocks, and
// both backups restore.
func TestSmallBlocksOverAWholeBlockReference(t *testing.T) {
	ctx := context.Background()
	r, _, _ := newMemRepo(t)
	dir, want := syntheticDataDir(t)
	for i, rel := range []string{"base/1/40000", "base/1/40001"} {
		want[rel] = randomBytes(uint64(50+i), 3<<20)
		writeFile(t, filepath.Join(dir, filepath.FromSlash(rel)), want[rel])
	}
	ageFiles(t, dir)
	old := BackupOptions{Workers: 2, Writers: 2}.withDefaults()
	old.wholeBlocks = true // as before format 3
	full, err := writeBackup(ctx, r, old, incrRun("20261201T000000Z-aaaa", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	if full.Format != 1 || fileOf(t, full, "base/1/40000").BlockSize != 0 {
		t.Fatalf("reference: format %d; want format 1 with whole blocks", full.Format)
	}
	restoreAndCompare(t, r, full, want)
	copy(want["base/1/40001"][8192:], randomBytes(3, 8192))
	writeFile(t, filepath.Join(dir, "base/1/40001"), want["base/1/40001"])
	time.Sleep(10 * time.Millisecond)
	o := BackupOptions{Workers: 2, Writers: 2}.withDefaults()
	inc, err := writeBackup(ctx, r, o, incrRun("20261201T000100Z-bbbb", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	if inc.Format != 6 || inc.Type != TypeIncr {
		t.Fatalf("incremental: format %d type %q; want a format 6 incr", inc.Format, inc.Type)
	}
	if f := fileOf(t, inc, "base/1/40000"); f.BlockSize != 0 || len(f.Blocks) != 1 {
		t.Errorf("unchanged file: block size %d, %d blocks; want the reference's whole block", f.BlockSize, len(f.Blocks))
	}
	if f := fileOf(t, inc, "base/1/40001"); f.BlockSize != 8<<10 {
		t.Errorf("changed file: block size %d; want 8 KiB", f.BlockSize)
	}
	restoreAndCompare(t, r, inc, want)
	verifyClean(t, r)
}

func fileOf(t *testing.T, m *repo.Manifest, rel string) *repo.File {
	t.Helper()
	for i := range m.Files {
		if m.Files[i].Path == rel {
			return &m.Files[i]
		}
	}
	t.Fatalf("backup %s has no %s", m.ID, rel)
	return nil
}

// A file that grows past a block size step keeps its reference's cut, so
// an incremental stores what was appended, not the whole file again.
func TestSmallBlocksKeepTheReferencesCut(t *testing.T) {
	ctx := context.Background()
	r, _, _ := newMemRepo(t)
	dir, want := syntheticDataDir(t)
	rel := "base/1/60000"
	want[rel] = randomBytes(61, 15<<20) // 8 KiB blocks
	writeFile(t, filepath.Join(dir, filepath.FromSlash(rel)), want[rel])
	ageFiles(t, dir)
	o := BackupOptions{Workers: 2, Writers: 2}.withDefaults()
	full, err := writeBackup(ctx, r, o, incrRun("20261201T000000Z-aaaa", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	if bs := fileOf(t, full, rel).BlockSize; bs != 8<<10 {
		t.Fatalf("15 MiB file: block size %d, want 8 KiB", bs)
	}
	want[rel] = append(want[rel], randomBytes(62, 2<<20)...) // 17 MiB: past the 16 MiB step
	writeFile(t, filepath.Join(dir, filepath.FromSlash(rel)), want[rel])
	inc, err := writeBackup(ctx, r, o, incrRun("20261201T000100Z-bbbb", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	if bs := fileOf(t, inc, rel).BlockSize; bs != 8<<10 {
		t.Errorf("grown file: block size %d, want the reference's 8 KiB", bs)
	}
	if own := ownPackBytes(inc); own > 3<<20 {
		t.Errorf("appending 2 MiB stored %d bytes of packs; want about the 2 MiB appended", own)
	}
	restoreAndCompare(t, r, inc, want)
}

// Format 4: an incremental of an unchanged directory names the
// reference's file maps and writes none, so its manifest is small
// however many blocks the files have (and so does --type checksum, which
// reads every file); both restore alone after the reference is deleted,
// and once they are deleted too nothing is left.
func TestFileMapsSharedByAnUnchangedIncremental(t *testing.T) {
	ctx := context.Background()
	r, _, mb := newMemRepo(t)
	dir, want := syntheticDataDir(t)
	rel := "base/1/70000"
	want[rel] = randomBytes(71, 32<<20) // 2048 blocks of 16 KiB
	writeFile(t, filepath.Join(dir, filepath.FromSlash(rel)), want[rel])
	ageFiles(t, dir)
	o := BackupOptions{Workers: 2, Writers: 2}.withDefaults()
	full, err := writeBackup(ctx, r, o, incrRun("20261201T000000Z-aaaa", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	inc, err := writeBackup(ctx, r, o, incrRun("20261201T000100Z-bbbb", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range inc.Maps {
		if strings.HasPrefix(p.Name, repo.BackupPrefix(inc.ID)) {
			t.Errorf("an unchanged incremental wrote file map %s", p.Name)
		}
	}
	if f := fileOf(t, inc, rel); f.Map == nil || !strings.HasPrefix(f.Map.Object, repo.BackupPrefix(full.ID)) {
		t.Errorf("%s: map %+v; want the full's", rel, f.Map)
	}
	t.Logf("unchanged incremental: %d bytes stored (full %d, its maps %v)", inc.StoredSize, full.StoredSize, full.Maps)
	if inc.StoredSize > 4096 {
		t.Errorf("an incremental of an unchanged directory stored %d bytes; want a small manifest", inc.StoredSize)
	}
	cfg, err := repo.ReadConfig(ctx, mb)
	if err != nil || cfg.Format != 5 {
		t.Errorf("config format %d (%v) once a backup names another's file maps; want 5", cfg.Format, err)
	}
	restoreAndCompare(t, r, inc, want)

	// --type checksum reads every file; unchanged ones name the maps again.
	co := o
	co.Type = TypeChecksum
	chk, err := writeBackup(ctx, r, co, incrRun("20261201T000200Z-cccc", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	if chk.Type != TypeChecksum || chk.BytesRead == 0 || chk.StoredSize > 4096 {
		t.Errorf("checksum backup of an unchanged directory: type %q, read %d, stored %d; want every file read and a small manifest", chk.Type, chk.BytesRead, chk.StoredSize)
	}
	if err := r.DeleteBackup(ctx, full.ID); err != nil {
		t.Fatal(err)
	}
	restoreAndCompare(t, r, inc, want)
	restoreAndCompare(t, r, chk, want)
	verifyClean(t, r)
	for _, id := range []string{inc.ID, chk.ID} {
		if err := r.DeleteBackup(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	var left []string
	mb.List(ctx, "backups/", func(o storage.ObjectInfo) error {
		left = append(left, o.Name)
		return nil
	})
	if len(left) != 0 {
		t.Errorf("after deleting both backups, left: %v", left)
	}
}

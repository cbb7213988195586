package archive

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
)

// sizeParts splits what backup m stored into its own packs, its own map
// objects and the manifest.
func sizeParts(m *repo.Manifest) (packs, maps, manifest int64) {
	packs = ownPackBytes(m)
	for _, p := range m.Maps {
		if strings.HasPrefix(p.Name, repo.BackupPrefix(m.ID)) {
			maps += p.Size
		}
	}
	return packs, maps, m.StoredSize - packs - maps
}

// changePage writes 160 bytes of new content into page p of the file at
// path, as an updated row would, keeping the file's mtime (the change is
// found by reading: the file is read anyway when its mtime is recent).
func changePage(t *testing.T, path string, p int64, seed uint64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(randomBytes(seed, 160), p*pg.BlockSize+1000); err != nil {
		t.Fatal(err)
	}
}

// sparsePages makes a file of n pages, each with its own 24-byte header
// and zeros after it (sparse on disk: cheap to write, fast to read).
func sparsePages(t *testing.T, path string, n int64) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(n * pg.BlockSize); err != nil {
		t.Fatal(err)
	}
	hdr := make([]byte, 24)
	for p := int64(0); p < n; p++ {
		for k := range 8 {
			hdr[k] = byte(p >> (8 * k))
			hdr[8+k] = byte((uint64(p) * 0x9e3779b97f4a7c15) >> (8 * k))
		}
		if _, err := f.WriteAt(hdr, p*pg.BlockSize); err != nil {
			t.Fatal(err)
		}
	}
}

// The size target of patch maps: 100 pages changed, spread over a 1 GiB
// relation segment, make an incremental add well under 0.32 MB in all
// (manifest, maps and data), where a full map of the file is ~0.9 MB.
func TestPatchMapOf100PagesIn1GiB(t *testing.T) {
	if testing.Short() {
		t.Skip("reads 1 GiB twice")
	}
	ctx := context.Background()
	r, _, _ := newMemRepo(t)
	dir, want := syntheticDataDir(t)
	rel := "base/1/4000"
	path := filepath.Join(dir, filepath.FromSlash(rel))
	const pages = (1 << 30) / pg.BlockSize
	sparsePages(t, path, pages)
	ageFiles(t, dir)
	o := BackupOptions{}.withDefaults()
	full, err := writeBackup(ctx, r, o, incrRun("20261201T000000Z-aaaa", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	_, fullMaps, _ := sizeParts(full)

	for k := int64(0); k < 100; k++ {
		changePage(t, path, k*(pages/100)+k%7, uint64(100+k))
	}
	inc, err := writeBackup(ctx, r, o, incrRun("20261201T000100Z-bbbb", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	packs, maps, manifest := sizeParts(inc)
	t.Logf("full: %d bytes, of which maps %d; incremental after 100 changed pages of a 1 GiB file: %d bytes (data %d, maps %d, manifest %d)",
		full.StoredSize, fullMaps, inc.StoredSize, packs, maps, manifest)
	if f := fileOf(t, inc, rel); f.Map == nil || !f.Map.Patch || inc.Format != 6 {
		t.Fatalf("the changed file's map is %+v (format %d); want a patch of the full's", f.Map, inc.Format)
	}
	if inc.StoredSize >= 320_000 || maps+manifest > 32<<10 {
		t.Errorf("the incremental added %d bytes (data %d, maps %d, manifest %d); want well under 320,000, maps and manifest a few KB",
			inc.StoredSize, packs, maps, manifest)
	}
	// The list read back through the patch: the full's blocks but for the
	// 100 changed ones, which hold the file's new content (decoding every
	// block of 1 GiB here would take minutes on a busy machine).
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fm, err := r.ReadManifest(ctx, full.ID)
	if err != nil {
		t.Fatal(err)
	}
	im, err := r.ReadManifest(ctx, inc.ID)
	if err != nil {
		t.Fatal(err)
	}
	fb, ib := fileOf(t, fm, rel).Blocks, fileOf(t, im, rel).Blocks
	if len(ib) != len(fb) {
		t.Fatalf("the patched list has %d blocks, the full's %d", len(ib), len(fb))
	}
	var own int
	for j, b := range ib {
		name := im.Packs[b.Pack].Name
		if !strings.HasPrefix(name, repo.BackupPrefix(inc.ID)) {
			if !repo.SameBlock(b, im.Packs, fb[j], fm.Packs) {
				t.Fatalf("block %d of the patched list is %+v in %s; want the full's %+v", j, b, name, fb[j])
			}
			continue
		}
		own++
		rc, err := r.ReadPack(ctx, name, b.Offset, b.Length, im.Packs[b.Pack].Size)
		if err != nil {
			t.Fatal(err)
		}
		obj, _ := io.ReadAll(rc)
		rc.Close()
		plain, _, err := r.DecodeBlock(nil, obj)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(plain[b.ChunkOffset:b.ChunkOffset+b.Size], data[b.FileOffset:b.FileOffset+b.Size]) {
			t.Errorf("changed block %d read back through the patch differs from the file", j)
		}
	}
	if own != 100 {
		t.Errorf("%d blocks of the patched list are the incremental's; want the 100 changed", own)
	}
	delete(want, rel)
	got := readBack(t, r, inc.ID)
	delete(got, rel)
	sameFiles(t, "the other files of the incremental", got, want)
}

// Patch chains are bounded: each incremental after a small change
// patches the previous map, the ninth in a row is written whole, and so
// is a patch of more than a quarter of the blocks. Deleting the backups
// whose maps a chain goes through leaves the newest restorable and
// verified, and retention keeps exactly the map objects it needs.
func TestPatchMapChains(t *testing.T) {
	ctx := context.Background()
	r, _, mb := newMemRepo(t)
	dir, want := syntheticDataDir(t)
	rel := "base/1/5000"
	path := filepath.Join(dir, filepath.FromSlash(rel))
	const pages = 2048 // 16 MiB: 16 KiB blocks, 1024 of them
	sparsePages(t, path, pages)
	o := BackupOptions{}.withDefaults()
	o.Workers, o.Writers = 2, 1
	var ids []string
	var depths []int
	start := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	backup := func(n int) *repo.Manifest {
		t.Helper()
		id := repo.NewBackupID(start.Add(time.Duration(n)*time.Minute), "abcd")
		m, err := writeBackup(ctx, r, o, incrRun(id, dir), stopAt, discard())
		if err != nil {
			t.Fatal(err)
		}
		read, err := r.ReadManifest(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		depths = append(depths, fileOf(t, read, rel).MapDepth)
		return m
	}
	backup(0)
	for n := 1; n <= 10; n++ {
		changePage(t, path, int64(n*97), uint64(n))
		backup(n)
	}
	wantDepths := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1}
	for i := range wantDepths {
		if depths[i] != wantDepths[i] {
			t.Fatalf("patch depths of the changed file's map over 11 backups: %v; want %v", depths, wantDepths)
		}
	}
	// A third of the pages change: a full map, not a patch.
	for p := int64(0); p < pages; p += 3 {
		changePage(t, path, p, uint64(p+1000))
	}
	last := backup(11)
	if depths[11] != 0 {
		t.Errorf("after a third of the pages changed the map is %d patches deep; want a full map", depths[11])
	}
	// A small change again: a patch of that full map, then delete every
	// backup but the newest.
	changePage(t, path, 5, 77)
	last = backup(12)
	if depths[12] != 1 {
		t.Errorf("after one more page the map is %d patches deep; want 1", depths[12])
	}
	data, _ := os.ReadFile(path)
	want[rel] = data
	sameFiles(t, "newest backup", readBack(t, r, last.ID), want)
	for _, id := range ids[:len(ids)-1] {
		if err := r.DeleteBackup(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	plan, err := r.PlanRetention(ctx, repo.RetentionOptions{RetainFull: 1, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.ApplyRetention(ctx, plan); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, "newest backup after deleting the others", readBack(t, r, last.ID), want)
	restoreAndCompare(t, r, last, want)
	verifyClean(t, r)
	// Of the others' map objects, exactly those the newest one's chain
	// needs are left.
	needed := map[string]bool{}
	for _, p := range last.Maps {
		needed[p.Name] = true
	}
	for _, name := range mb.Names() {
		if strings.Contains(name, "/map/") && !strings.HasPrefix(name, repo.BackupPrefix(last.ID)) && !needed[name] {
			t.Errorf("map %s of a deleted backup is left; the newest backup does not need it", name)
		}
	}
	for name := range needed {
		if !containsName(mb.Names(), name) {
			t.Errorf("map %s the newest backup needs is gone", name)
		}
	}
}

func containsName(names []string, n string) bool {
	for _, x := range names {
		if x == n {
			return true
		}
	}
	return false
}

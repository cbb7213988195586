package archive

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/storage"
	fsstore "github.com/pgkeep/pgkeep/storage/fs"
	"github.com/pgkeep/pgkeep/storage/mem"
)

// repackFiles is how many 16 KiB relation files repackSeries' data
// directory has; backup b after the full rewrites the four whose index is
// b-1 modulo 10, so the dead blocks are spread over all of the full's packs.
const repackFiles = 40

func repackFile(i int) string { return fmt.Sprintf("base/1/%d", 30000+i) }

func repackID(i int) string { return fmt.Sprintf("20261201T%02d0000Z-%04x", i, 0xa000+i) }

// repackSeries takes n backups (a full, then incrementals each after four
// files changed) and returns their IDs and the files each must restore.
func repackSeries(t *testing.T, r *repo.Repository, n int) (string, []string, []map[string][]byte) {
	t.Helper()
	ctx := context.Background()
	dir, want := syntheticDataDir(t)
	for i := range repackFiles {
		want[repackFile(i)] = randomBytes(uint64(1000+i), 2*8192)
		writeFile(t, filepath.Join(dir, filepath.FromSlash(repackFile(i))), want[repackFile(i)])
	}
	ageFiles(t, dir)
	o := repackOptions()
	var ids []string
	var states []map[string][]byte
	for b := range n {
		if b > 0 {
			for k := range 4 {
				f := repackFile((b-1)%10 + 10*k)
				want[f] = randomBytes(uint64(100000*b+k), 2*8192)
				writeFile(t, filepath.Join(dir, filepath.FromSlash(f)), want[f])
			}
		}
		m, err := writeBackup(ctx, r, o, incrRun(repackID(b), dir), stopAt, discard())
		if err != nil {
			t.Fatalf("backup %d: %v", b, err)
		}
		if b > 0 && m.Type != TypeIncr {
			t.Fatalf("backup %d is %s, want incr", b, m.Type)
		}
		ids = append(ids, m.ID)
		states = append(states, maps.Clone(want))
	}
	return dir, ids, states
}

// repackOptions: several objects a pack, so a pack can be partly dead,
// and one worker and writer, so the packs' layout (and so which of them a
// repack picks) is the same in every run.
func repackOptions() BackupOptions {
	o := smallBlocks()
	o.PackSize, o.Workers, o.Writers = 128<<10, 1, 1
	return o
}

// packBytes is every pack byte stored; liveBytes the bytes of the objects
// the committed backups name (each object once).
func packBytes(t *testing.T, m *mem.Backend) int64 {
	t.Helper()
	var n int64
	for name, size := range objectsUnder(t, m, "backups/") {
		if strings.Contains(name, "/pack/") {
			n += size
		}
	}
	return n
}

func liveBytes(t *testing.T, r *repo.Repository) int64 {
	t.Helper()
	ctx := context.Background()
	ids, err := r.BackupIDs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	type obj struct {
		pack        string
		off, length int64
	}
	seen := map[obj]bool{}
	var n int64
	for _, id := range ids {
		m, err := r.ReadManifest(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range m.Files {
			for _, b := range f.Blocks {
				o := obj{m.Packs[b.Pack].Name, b.Offset, b.Length}
				if !seen[o] {
					seen[o] = true
					n += b.Length
				}
			}
		}
	}
	return n
}

// After 12 backups with changing data and a retention that deletes the
// oldest six, the full's packs are kept whole for the minority of their
// blocks the kept backups name; a repack moves those blocks into new
// packs, and once the old packs are gone the repository holds at most
// 1.2x the live data. Every kept backup restores byte for byte and
// verifies, before and after the old packs are removed; an incremental
// taken after the repack (whose reference's maps name a removed pack)
// does too, and a later retention keeps what the relocations need.
func TestRepackAfterRetention(t *testing.T) {
	ctx := context.Background()
	r, _, m := newMemRepo(t)
	dir, ids, states := repackSeries(t, r, 12)
	plan, err := r.PlanRetention(ctx, repo.RetentionOptions{RetainFull: 6, Now: time.Now()})
	if err != nil || len(plan.Backups) != 6 {
		t.Fatalf("plan %+v, %v; want the oldest six deleted", plan, err)
	}
	if err := r.ApplyRetention(ctx, plan); err != nil {
		t.Fatal(err)
	}
	data, live := packBytes(t, m), liveBytes(t, r)
	t.Logf("after retention: %d pack bytes, %d live (%.2fx)", data, live, float64(data)/float64(live))
	if float64(data) <= 1.2*float64(live) {
		t.Fatalf("the setup leaves %d pack bytes for %d live: no repack needed, the test proves nothing", data, live)
	}

	res, err := r.Repack(ctx, repo.RepackOptions{MaxBytes: 1 << 30, Grace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Repacked) == 0 || len(res.Removed) != 0 || res.LiveBytes != live || res.DataBytes != data {
		t.Fatalf("repack %+v; want packs repacked, none removed within the grace, live %d of %d", res, live, data)
	}
	for _, p := range res.Repacked {
		if !strings.HasPrefix(p, repo.BackupPrefix(ids[0])) {
			t.Errorf("repacked %s, which is no pack of the deleted full", p)
		}
	}
	// Old packs and new ones side by side: every kept backup reads the
	// new ones.
	for i := 6; i < 12; i++ {
		restoreAndCompare(t, r, mustManifest(t, r, ids[i]), states[i])
	}
	verifyClean(t, r)

	// Past the grace the old packs go.
	res2, err := r.Repack(ctx, repo.RepackOptions{MaxBytes: 1 << 30, Grace: 0})
	if err != nil {
		t.Fatal(err)
	}
	if len(res2.Removed) != len(res.Repacked) || len(res2.Repacked) != 0 {
		t.Fatalf("second run %+v; want the %d repacked packs removed and nothing more repacked", res2, len(res.Repacked))
	}
	for _, p := range res.Repacked {
		if _, err := m.Stat(ctx, p); err == nil {
			t.Errorf("%s is still stored", p)
		}
	}
	data, live = packBytes(t, m), liveBytes(t, r)
	t.Logf("after repack: %d pack bytes, %d live (%.2fx), %d bytes copied", data, live, float64(data)/float64(live), res.Copied)
	if float64(data) > 1.2*float64(live) {
		t.Errorf("repository holds %d pack bytes for %d live bytes: over 1.2x", data, live)
	}
	for i := 6; i < 12; i++ {
		restoreAndCompare(t, r, mustManifest(t, r, ids[i]), states[i])
	}
	verifyClean(t, r)

	// A new incremental reads its reference through the relocations, and
	// names file maps that name removed packs.
	want := maps.Clone(states[11])
	f := repackFile(0)
	want[f] = randomBytes(777, 2*8192)
	writeFile(t, filepath.Join(dir, filepath.FromSlash(f)), want[f])
	inc, err := writeBackup(ctx, r, repackOptions(), incrRun(repackID(12), dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	restoreAndCompare(t, r, mustManifest(t, r, inc.ID), want)
	// Retention down to the newest: the relocations and new packs it
	// needs stay, and it still restores and verifies.
	plan, err = r.PlanRetention(ctx, repo.RetentionOptions{RetainFull: 1, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.ApplyRetention(ctx, plan); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Repack(ctx, repo.RepackOptions{MaxBytes: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	restoreAndCompare(t, r, mustManifest(t, r, inc.ID), want)
	verifyClean(t, r)
	cfg, err := repo.ReadConfig(ctx, m)
	if err != nil || cfg.Format != 5 {
		t.Fatalf("repository format %d (%v) after a repack; want 5 (binary maps, relocations)", cfg.Format, err)
	}
}

func mustManifest(t *testing.T, r *repo.Repository, id string) *repo.Manifest {
	t.Helper()
	mf, err := r.ReadManifest(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return mf
}

// --max-repack-bytes bounds each run: no run copies more, and runs one
// after another finish the work.
func TestRepackBoundedPerRun(t *testing.T) {
	ctx := context.Background()
	r, _, m := newMemRepo(t)
	_, ids, states := repackSeries(t, r, 12)
	plan, err := r.PlanRetention(ctx, repo.RetentionOptions{RetainFull: 6, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.ApplyRetention(ctx, plan); err != nil {
		t.Fatal(err)
	}
	all, err := r.Repack(ctx, repo.RepackOptions{MaxBytes: 0, Grace: 0})
	if err != nil || len(all.Repacked) != 0 {
		t.Fatalf("max 0 repacked %v (%v); want repacking off", all.Repacked, err)
	}
	if got := objectsUnder(t, m, repo.BackupPrefix(ids[0])); len(got) == 0 {
		t.Fatal("the full's packs are gone: nothing to repack")
	}
	// The bound: the live bytes of the fullest candidate, so every run
	// can move one pack but not all.
	perPack := map[string]int64{}
	seen := map[string]bool{}
	for i := 6; i < 12; i++ {
		mf := mustManifest(t, r, ids[i])
		for _, f := range mf.Files {
			for _, b := range f.Blocks {
				k := fmt.Sprint(mf.Packs[b.Pack].Name, b.Offset)
				if p := mf.Packs[b.Pack].Name; strings.HasPrefix(p, repo.BackupPrefix(ids[0])) && !seen[k] {
					seen[k] = true
					perPack[p] += b.Length
				}
			}
		}
	}
	var bound int64
	for _, n := range perPack {
		bound = max(bound, n)
	}
	done := map[string]bool{}
	runs := 0
	for ; runs < 50; runs++ {
		res, err := r.Repack(ctx, repo.RepackOptions{MaxBytes: bound, Grace: 0})
		if err != nil {
			t.Fatal(err)
		}
		if res.Copied > bound {
			t.Fatalf("run %d copied %d bytes, bound %d", runs, res.Copied, bound)
		}
		for _, p := range res.Repacked {
			if done[p] {
				t.Fatalf("%s repacked twice", p)
			}
			done[p] = true
		}
		if len(res.Repacked) == 0 {
			break
		}
	}
	if runs < 2 || len(done) < 2 {
		t.Fatalf("%d runs repacked %d packs; want the work spread over several runs", runs, len(done))
	}
	data, live := packBytes(t, m), liveBytes(t, r)
	if float64(data) > 1.2*float64(live) {
		t.Errorf("after %d bounded runs: %d pack bytes for %d live", runs, data, live)
	}
	for i := 6; i < 12; i++ {
		restoreAndCompare(t, r, mustManifest(t, r, ids[i]), states[i])
	}
	verifyClean(t, r)
}

// The interleaving that could lose data: a backup B starts after the
// repack listed the running backups, and reads its reference's manifest
// (naming blocks in a pack being repacked) before the relocation is
// written. B names the old pack's blocks; the repack's removal of old
// packs sees B running and keeps the pack, B commits and restores, and a
// later run removes the old pack once B's blocks are all in the
// relocation: B still restores (through it) and verifies.
func TestRepackWhileABackupReadsTheOldPack(t *testing.T) {
	ctx := context.Background()
	r, _, m := newMemRepo(t)
	dir, ids, states := repackSeries(t, r, 12)
	plan, err := r.PlanRetention(ctx, repo.RetentionOptions{RetainFull: 6, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.ApplyRetention(ctx, plan); err != nil {
		t.Fatal(err)
	}
	// B backs up the data of the oldest kept backup, with it as its
	// reference: it reuses the full's blocks that only the older kept
	// backups still name, those of the packs the repack picks.
	want := maps.Clone(states[6])
	want[repackFile(5)] = randomBytes(4242, 2*8192)
	for rel, data := range want {
		writeFile(t, filepath.Join(dir, filepath.FromSlash(rel)), data)
	}
	bo := repackOptions()
	bo.Reference = ids[6]

	type result struct {
		m   *repo.Manifest
		err error
	}
	atStop := make(chan *repo.Manifest)
	resume := make(chan struct{})
	done := make(chan result, 1)
	var oldNamed []string
	res, err := r.Repack(ctx, repo.RepackOptions{MaxBytes: 1 << 30, Grace: 0, BeforeRelocate: func() {
		go func() {
			mf, err := writeBackup(ctx, r, bo, incrRun(repackID(12), dir), func(mf *repo.Manifest) error {
				atStop <- mf
				<-resume
				return stopAt(mf)
			}, discard())
			done <- result{mf, err}
		}()
		select {
		case mf := <-atStop:
			for _, p := range mf.Packs {
				if strings.HasPrefix(p.Name, repo.BackupPrefix(ids[0])) {
					oldNamed = append(oldNamed, p.Name)
				}
			}
		case r := <-done:
			t.Errorf("backup ended before its stop: %v", r.err)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	// The old packs B names that the repack moved.
	var both []string
	for _, p := range oldNamed {
		if slices.Contains(res.Repacked, p) {
			both = append(both, p)
		}
	}
	if len(both) == 0 {
		t.Fatalf("the backup names %v of the full's packs, the repack moved %v: the interleaving did not happen", oldNamed, res.Repacked)
	}
	for _, p := range oldNamed {
		if _, err := m.Stat(ctx, p); err != nil {
			t.Fatalf("%s, which a running backup names, was removed: %v (removed %v)", p, err, res.Removed)
		}
	}
	close(resume)
	b := <-done
	if b.err != nil {
		t.Fatalf("the backup that read the old pack failed: %v", b.err)
	}
	restoreAndCompare(t, r, mustManifest(t, r, b.m.ID), want)
	// Now no one runs: the old packs go, B reads through the relocation.
	res, err = r.Repack(ctx, repo.RepackOptions{MaxBytes: 1 << 30, Grace: 0})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range both {
		if _, err := m.Stat(ctx, p); err == nil {
			t.Errorf("%s still stored after the backup committed (removed %v)", p, res.Removed)
		}
	}
	restoreAndCompare(t, r, mustManifest(t, r, b.m.ID), want)
	for i := 6; i < 12; i++ {
		restoreAndCompare(t, r, mustManifest(t, r, ids[i]), states[i])
	}
	verifyClean(t, r)
	var moved int
	m.List(ctx, "backups/", func(o storage.ObjectInfo) error {
		if strings.Contains(o.Name, "/moved/") {
			moved++
		}
		return nil
	})
	if moved == 0 {
		t.Error("no relocation objects left, though backups read through them")
	}
}

// A delete leaves a young pack numbered like a repack's new pack alone
// (a repack may be about to write the relocation naming it), and removes
// it once it is an hour old and still named by nothing.
func TestDeleteLeavesAYoungRepackTarget(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	b, err := fsstore.New(root)
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
	dir, _ := syntheticDataDir(t)
	ageFiles(t, dir)
	full, err := writeBackup(ctx, r, smallBlocks(), incrRun(repackID(0), dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := writeBackup(ctx, r, smallBlocks(), incrRun(repackID(1), dir), stopAt, discard()); err != nil {
		t.Fatal(err)
	}
	if err := r.DeleteBackup(ctx, full.ID); err != nil {
		t.Fatal(err)
	}
	target := repo.BackupPrefix(full.ID) + "pack/500000"
	if err := b.Put(ctx, target, strings.NewReader("a repack's copy"), storage.PutOptions{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	apply := func() {
		t.Helper()
		plan, err := r.PlanRetention(ctx, repo.RetentionOptions{RetainFull: 1, Now: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.ApplyRetention(ctx, plan); err != nil {
			t.Fatal(err)
		}
	}
	apply()
	if _, err := b.Stat(ctx, target); err != nil {
		t.Fatalf("a young repack target was removed: %v", err)
	}
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(filepath.Join(root, filepath.FromSlash(target)), old, old); err != nil {
		t.Fatal(err)
	}
	apply()
	if _, err := b.Stat(ctx, target); err == nil {
		t.Fatal("an hour-old repack target that nothing names is still stored")
	}
}

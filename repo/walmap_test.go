package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/fs"
	"github.com/pgkeep/pgkeep/walmap"
	"github.com/pgkeep/pgkeep/walmap/walmaptest"
)

// mapRepo is an encrypted fs repository holding segments 1..n of timeline
// 1 (valid WAL, vSegSize bytes) stored as wal-push does, with their block
// maps when withMaps, and one backup from segment 1.
func mapRepo(t *testing.T, n int, withMaps bool) (*Repository, string, [][]byte) {
	t.Helper()
	ctx := context.Background()
	root := t.TempDir()
	b, err := fs.Create(root)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := age.GenerateX25519Identity()
	keys := Keys{Recipients: []age.Recipient{id.Recipient()}, Identities: []age.Identity{id}}
	if _, err := Init(ctx, b, InitOptions{CompressionLevel: 1, Keys: keys, SystemIdentifier: vSysid, Now: time.Now()}); err != nil {
		t.Fatal(err)
	}
	r, err := Open(ctx, b, OpenOptions{Keys: keys, CompressionLevel: -1})
	if err != nil {
		t.Fatal(err)
	}
	names, segs := walmaptest.Segments(vSysid, 1, vSegSize, 1, n)
	dir := t.TempDir()
	for i, name := range names {
		putSegment(t, r, dir, name, segs[i], withMaps)
	}
	m := &Manifest{Summary: Summary{ID: "20260101T000000Z-aaaa", StartTime: time.Now(), StartLSN: "0/100028",
		StartWAL: vSegName(1, 1), StopWAL: vSegName(1, 2), SegmentSize: vSegSize, Timeline: 1, SystemIdentifier: fmt.Sprint(vSysid)}}
	if err := r.CommitBackup(ctx, m); err != nil {
		t.Fatal(err)
	}
	return r, root, segs
}

// putSegment stores a segment as wal-push does: through PutWALSegment,
// the map built from the bytes handed to inspect.
func putSegment(t *testing.T, r *Repository, dir, name string, data []byte, withMap bool) {
	t.Helper()
	ctx := context.Background()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	wf, _ := pg.ParseWALFileName(name)
	var build func([]byte) (*walmap.Map, error)
	if withMap {
		build = func(b []byte) (*walmap.Map, error) { return walmap.Build(b, name, uint32(len(b))) }
	}
	_, mapErr, err := r.PutWALSegment(ctx, wf, f, int64(len(data)), build)
	if err != nil || mapErr != nil {
		t.Fatalf("%s: %v (map: %v)", name, err, mapErr)
	}
	if has, err := r.HasWALMap(ctx, wf); err != nil || has != withMap {
		t.Fatalf("%s: map stored %v (%v), want %v", name, has, err, withMap)
	}
}

func TestWALMapsStoredBesideSegments(t *testing.T) {
	ctx := context.Background()
	r, _, segs := mapRepo(t, 3, true)
	wf, _ := pg.ParseWALFileName(vSegName(1, 2))
	m, err := r.FetchWALMap(ctx, wf)
	if err != nil {
		t.Fatal(err)
	}
	if err := walmap.Verify(segs[1], wf.Name, m); err != nil {
		t.Fatal(err)
	}
	if WALMapObjectName(wf) != "wal/0000000100000000/"+wf.Name+".map" {
		t.Fatalf("map object %s", WALMapObjectName(wf))
	}
	// ListWAL lists WAL files only.
	var listed []string
	if err := r.ListWAL(ctx, "0000000100000000", func(n string) error { listed = append(listed, n); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := []string{vSegName(1, 1), vSegName(1, 2), vSegName(1, 3)}; !slices.Equal(listed, want) {
		t.Fatalf("ListWAL %v, want %v", listed, want)
	}
	// An identical re-push is success and leaves the map alone; a map put
	// twice is create-if-absent.
	putSegment(t, r, t.TempDir(), wf.Name, segs[1], true)
	if newest, _, ok, err := r.NewestWAL(ctx); err != nil || !ok || newest.Name != vSegName(1, 3) {
		t.Fatalf("newest %v %v %v", newest, ok, err)
	}
}

// A repository with maps answers info and verify's continuity exactly as
// one without; the maps' bytes are counted apart.
func TestWALMapsInvisibleToWALReaders(t *testing.T) {
	ctx := context.Background()
	with, _, _ := mapRepo(t, 5, true)
	without, _, _ := mapRepo(t, 5, false)
	infos := []string{}
	for _, r := range []*Repository{with, without} {
		inf, err := r.Info(ctx, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		for i := range inf.Timelines {
			inf.Timelines[i].LastArchived = nil // when the test stored it
		}
		j, _ := json.Marshal(inf.Timelines)
		infos = append(infos, string(j))
		if r == with && inf.Size.WALMaps == 0 {
			t.Fatal("maps not counted")
		}
		if r == without && inf.Size.WALMaps != 0 {
			t.Fatal("maps counted in a repository without")
		}
		a, err := r.ReadWALArchive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(a.objects) != 5 || len(a.names) != 5 {
			t.Fatalf("WAL archive: %d objects, %d names", len(a.objects), len(a.names))
		}
		s, _ := r.ReadSummary(ctx, "20260101T000000Z-aaaa")
		if p := a.CheckContinuity(s); len(p) != 0 {
			t.Fatal(p)
		}
	}
	if infos[0] != infos[1] {
		t.Fatalf("info with maps %s, without %s", infos[0], infos[1])
	}
}

func TestVerifyChecksWALMaps(t *testing.T) {
	ctx := context.Background()
	r, root, segs := mapRepo(t, 4, true)
	cache, err := OpenVerifyCache(t.TempDir(), r)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := r.Verify(ctx, VerifyOptions{Cache: cache})
	if err != nil || len(rep.Problems) > 0 || rep.WAL.Maps != 4 || rep.WAL.Read != 4 {
		t.Fatalf("clean repository: %v %v %+v", err, rep.Problems, rep.WAL)
	}
	rep, err = r.Verify(ctx, VerifyOptions{Cache: cache})
	if err != nil || len(rep.Problems) > 0 || rep.WAL.Cached != 4 || rep.WAL.Read != 0 || rep.WAL.Maps != 4 {
		t.Fatalf("cached verify: %v %v %+v", err, rep.Problems, rep.WAL)
	}

	// Replace segment 3's map by segment 2's (a valid map of other bytes)
	// and damage segment 4's object: both are named, the cache no help.
	wf2, _ := pg.ParseWALFileName(vSegName(1, 2))
	wf3, _ := pg.ParseWALFileName(vSegName(1, 3))
	wf4, _ := pg.ParseWALFileName(vSegName(1, 4))
	m2, err := r.FetchWALMap(ctx, wf2)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.backend.Delete(ctx, WALMapObjectName(wf3)); err != nil {
		t.Fatal(err)
	}
	if err := r.PutObject(ctx, WALMapObjectName(wf3), m2.Marshal(), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	p4 := filepath.Join(root, filepath.FromSlash(WALMapObjectName(wf4)))
	data, _ := os.ReadFile(p4)
	data[len(data)-3] ^= 0xff
	os.WriteFile(p4, data, 0o600)
	os.Chtimes(p4, time.Now().Add(time.Hour), time.Now().Add(time.Hour))
	rep, err = r.Verify(ctx, VerifyOptions{Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	for _, wf := range []pg.WALFile{wf3, wf4} {
		if p := problemsFor(rep, WALMapObjectName(wf)); len(p) != 1 {
			t.Fatalf("problems for %s: %v (all %v)", WALMapObjectName(wf), p, rep.Problems)
		}
	}
	if len(rep.Problems) != 2 || rep.WAL.Bad != 2 {
		t.Fatalf("problems %v, stats %+v", rep.Problems, rep.WAL)
	}
	_ = segs
}

func TestRetentionDeletesWALMaps(t *testing.T) {
	ctx := context.Background()
	r, _, _ := mapRepo(t, 8, true)
	rollupSegments = 4
	defer func() { rollupSegments = RollupSegments }()
	if _, err := r.WALMapsCovering(ctx, WALPath{Timeline: 1, SegmentSize: vSegSize}, pg.LSN(4*vSegSize), pg.LSN(7*vSegSize)); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	m := &Manifest{Summary: Summary{ID: "20260102T000000Z-bbbb", StartTime: now, StopTime: now, StartLSN: pg.LSN(6 * vSegSize).String(),
		StartWAL: vSegName(1, 6), StopWAL: vSegName(1, 6), SegmentSize: vSegSize, Timeline: 1, SystemIdentifier: fmt.Sprint(vSysid)}}
	if err := r.CommitBackup(ctx, m); err != nil {
		t.Fatal(err)
	}
	plan, err := r.PlanRetention(ctx, RetentionOptions{RetainFull: 1, DebrisMinAge: time.Hour, Now: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, w := range plan.WAL {
		got = append(got, w[strings.LastIndexByte(w, '/')+1:])
	}
	var want []string
	for n := uint64(1); n <= 5; n++ {
		want = append(want, vSegName(1, n), vSegName(1, n)+".map")
	}
	slices.Sort(want)
	// The roll-up of 4..7 stays: segments 6 and 7 are kept.
	if !slices.Equal(got, want) {
		t.Fatalf("retention deletes %v, want %v", got, want)
	}
	if err := r.ApplyRetention(ctx, plan); err != nil {
		t.Fatal(err)
	}
	rep, err := r.Verify(ctx, VerifyOptions{})
	if err != nil || len(rep.Problems) != 0 {
		t.Fatalf("verify after retention: %v %v", err, rep.Problems)
	}
}

func TestWALMapsCovering(t *testing.T) {
	ctx := context.Background()
	r, _, _ := mapRepo(t, 10, true)
	rollupSegments = 4
	defer func() { rollupSegments = RollupSegments }()
	path := WALPath{Timeline: 1, SegmentSize: vSegSize}
	from, to := pg.LSN(1*vSegSize+100), pg.LSN(10*vSegSize+5000)
	m, err := r.WALMapsCovering(ctx, path, from, to)
	if err != nil {
		t.Fatal(err)
	}
	if m.Start > from || m.End < to || len(m.Forks) != 3 || len(m.Unknown) != 0 {
		t.Fatalf("merged map %s..%s, %d forks, unknown %v", m.Start, m.End, len(m.Forks), m.Unknown)
	}
	// Group 4..7 is complete: its roll-up was written; group 0..3 lacks
	// segment 0, group 8..11 segments 11 and 12.
	f4, _ := pg.ParseWALFileName(vSegName(1, 4))
	f7, _ := pg.ParseWALFileName(vSegName(1, 7))
	f0, _ := pg.ParseWALFileName(vSegName(1, 0))
	f3, _ := pg.ParseWALFileName(vSegName(1, 3))
	if _, err := r.backend.Stat(ctx, WALRollupObjectName(f4, f7)); err != nil {
		t.Fatalf("roll-up 4..7: %v", err)
	}
	if _, err := r.backend.Stat(ctx, WALRollupObjectName(f0, f3)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("roll-up of an incomplete group: %v", err)
	}
	// A second call reads the roll-up and answers the same.
	again, err := r.WALMapsCovering(ctx, path, from, to)
	if err != nil || !bytes.Equal(again.Marshal(), m.Marshal()) {
		t.Fatalf("second call differs: %v", err)
	}
	// The roll-up equals the merge of its maps, and verify says so.
	rep, err := r.Verify(ctx, VerifyOptions{})
	if err != nil || len(rep.Problems) != 0 || rep.WAL.Maps != 11 {
		t.Fatalf("verify: %v %v %+v", err, rep.Problems, rep.WAL)
	}

	// Explicit "not covered", with the reason.
	notCovered := func(from, to pg.LSN, reason string) {
		t.Helper()
		_, err := r.WALMapsCovering(ctx, path, from, to)
		var nc *NotCoveredError
		if !errors.As(err, &nc) || !errors.Is(err, ErrNotCovered) || !strings.Contains(nc.Reason, reason) {
			t.Fatalf("%s..%s: %v, want not covered: %s", from, to, err, reason)
		}
	}
	notCovered(pg.LSN(9*vSegSize), pg.LSN(12*vSegSize), vSegName(1, 11)+" is not archived")
	f9, _ := pg.ParseWALFileName(vSegName(1, 9))
	if err := r.backend.Delete(ctx, WALMapObjectName(f9)); err != nil {
		t.Fatal(err)
	}
	notCovered(from, to, vSegName(1, 9)+" has no block map")
	// A range inside the roll-up's group is answered from its segments'
	// maps: the roll-up would bring in segment 4's and 7's blocks.
	if part, err := r.WALMapsCovering(ctx, path, pg.LSN(5*vSegSize+100), pg.LSN(6*vSegSize+100)); err != nil {
		t.Fatalf("range inside the roll-up: %v", err)
	} else if part.Start != pg.LSN(5*vSegSize) || part.End != pg.LSN(7*vSegSize) {
		t.Fatalf("range 5..6 merged as %s..%s, want exactly segments 5 and 6", part.Start, part.End)
	}
	// A map of other bytes is refused.
	f8, _ := pg.ParseWALFileName(vSegName(1, 8))
	m8, _ := r.FetchWALMap(ctx, f8)
	m8.SegmentSHA256[0] ^= 1
	r.backend.Delete(ctx, WALMapObjectName(f8))
	if err := r.PutWALMap(ctx, f8, m8); err != nil {
		t.Fatal(err)
	}
	notCovered(pg.LSN(8*vSegSize), pg.LSN(9*vSegSize), "of other bytes")
}

// A roll-up that is not the merge of its maps is named by verify, and
// WALMapsCovering answers from the segment maps instead when it does not
// even cover its group.
func TestWrongRollup(t *testing.T) {
	ctx := context.Background()
	r, _, _ := mapRepo(t, 8, true)
	rollupSegments = 4
	defer func() { rollupSegments = RollupSegments }()
	path := WALPath{Timeline: 1, SegmentSize: vSegSize}
	want, err := r.WALMapsCovering(ctx, path, pg.LSN(4*vSegSize), pg.LSN(8*vSegSize))
	if err != nil {
		t.Fatal(err)
	}
	f4, _ := pg.ParseWALFileName(vSegName(1, 4))
	f7, _ := pg.ParseWALFileName(vSegName(1, 7))
	name := WALRollupObjectName(f4, f7)
	m4, err := r.FetchWALMap(ctx, f4)
	if err != nil {
		t.Fatal(err)
	}
	r.backend.Delete(ctx, name)
	if err := r.PutObject(ctx, name, m4.Marshal(), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := r.WALMapsCovering(ctx, path, pg.LSN(4*vSegSize), pg.LSN(8*vSegSize))
	if err != nil || !bytes.Equal(got.Marshal(), want.Marshal()) {
		t.Fatalf("with a wrong roll-up: %v", err)
	}
	rep, err := r.Verify(ctx, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p := problemsFor(rep, name); len(p) != 1 || len(rep.Problems) != 1 {
		t.Fatalf("problems %v", rep.Problems)
	}
}

// A map is stored beside its segment's upload; when that put fails (here:
// another segment of the same name is archived) the map it stored is
// removed again, so no map ever names bytes that are not archived.
func TestWALMapRemovedWhenSegmentPutFails(t *testing.T) {
	ctx := context.Background()
	r, _, _ := mapRepo(t, 1, false)
	names, segs := walmaptest.Segments(vSysid, 1, vSegSize, 1, 3)
	dir := t.TempDir()
	putSegment(t, r, dir, names[1], segs[1], false)
	// Other bytes under the name of segment 2: a different, valid segment
	// is taken for it (its own page header is not checked here).
	p := filepath.Join(dir, "other")
	if err := os.WriteFile(p, segs[2], 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	wf, _ := pg.ParseWALFileName(names[1])
	built := false
	_, mapErr, err := r.PutWALSegment(ctx, wf, f, int64(len(segs[2])), func(b []byte) (*walmap.Map, error) {
		built = true
		return walmap.Build(b, names[2], uint32(len(b)))
	})
	if !errors.Is(err, ErrWALConflict) {
		t.Fatalf("put of other bytes: %v (map: %v), want a WAL conflict", err, mapErr)
	}
	if !built {
		t.Fatal("the map was not built")
	}
	if has, err := r.HasWALMap(ctx, wf); err != nil || has {
		t.Fatalf("a map is left for the refused segment (%v, %v)", has, err)
	}
	// The archived segment with its own map still pushes cleanly.
	putSegment(t, r, dir, names[1], segs[1], true)
}

// WALPath.Local stands in for a segment not archived yet, or archived
// without its map yet, and only then: the merge equals the archived one.
func TestWALMapsCoveringLocal(t *testing.T) {
	ctx := context.Background()
	r, _, segs := mapRepo(t, 3, true)
	path := WALPath{Timeline: 1, SegmentSize: vSegSize}
	from, to := pg.LSN(1*vSegSize+100), pg.LSN(3*vSegSize+100)
	want, err := r.WALMapsCovering(ctx, path, from, to)
	if err != nil {
		t.Fatal(err)
	}
	f3, _ := pg.ParseWALFileName(vSegName(1, 3))
	local, err := walmap.Build(segs[2], f3.Name, vSegSize)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.backend.Delete(ctx, WALMapObjectName(f3)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.WALMapsCovering(ctx, path, from, to); !errors.Is(err, ErrNotCovered) {
		t.Fatalf("segment 3 without its map: %v, want not covered", err)
	}
	withLocal := path
	withLocal.Local = []*walmap.Map{local}
	got, err := r.WALMapsCovering(ctx, withLocal, from, to)
	if err != nil || !bytes.Equal(got.Marshal(), want.Marshal()) {
		t.Fatalf("segment 3 archived without a map, given locally: %v (equal %v)", err, err == nil && bytes.Equal(got.Marshal(), want.Marshal()))
	}
	if err := r.backend.Delete(ctx, WALObjectName(f3)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.WALMapsCovering(ctx, path, from, to); !errors.Is(err, ErrNotCovered) {
		t.Fatalf("segment 3 not archived: %v, want not covered", err)
	}
	got, err = r.WALMapsCovering(ctx, withLocal, from, to)
	if err != nil || !bytes.Equal(got.Marshal(), want.Marshal()) {
		t.Fatalf("segment 3 not archived, given locally: %v", err)
	}
	// A local map of another segment stands in for nothing.
	f2, _ := pg.ParseWALFileName(vSegName(1, 2))
	other, _ := walmap.Build(segs[1], f2.Name, vSegSize)
	withLocal.Local = []*walmap.Map{other}
	if _, err := r.WALMapsCovering(ctx, withLocal, from, to); !errors.Is(err, ErrNotCovered) {
		t.Fatalf("a local map of segment 2 for a missing segment 3: %v, want not covered", err)
	}
}

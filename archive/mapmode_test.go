package archive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/walmap"
	"github.com/pgkeep/pgkeep/walmap/walmaptest"
)

// readChunked is readBack decoding each chunk once (readBack decodes a
// chunk for every small block in it).
func readChunked(t *testing.T, r *repo.Repository, id string) map[string][]byte {
	t.Helper()
	ctx := context.Background()
	m, err := r.ReadManifest(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	plain := map[[2]int64][]byte{}
	out := map[string][]byte{}
	for _, f := range m.Files {
		got := make([]byte, f.Size)
		for _, b := range f.Refs() {
			key := [2]int64{int64(b.Pack), b.Offset}
			data, ok := plain[key]
			if !ok {
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
				if data, _, err = r.DecodeBlock(nil, obj); err != nil {
					t.Fatalf("backup %s: %s block at %d: %v", id, f.Path, b.FileOffset, err)
				}
				plain[key] = data
			}
			copy(got[b.FileOffset:], data[b.ChunkOffset:b.ChunkOffset+b.Size])
		}
		out[f.Path] = got
	}
	return out
}

func TestRelFile(t *testing.T) {
	for _, c := range []struct {
		rel   string
		k     walmap.RelFork
		first uint32
		ok    bool
	}{
		{"base/5/16384", walmap.RelFork{Spc: 1663, DB: 5, Rel: 16384}, 0, true},
		{"base/5/16384.2", walmap.RelFork{Spc: 1663, DB: 5, Rel: 16384}, 2 * pg.RelSegBlocks, true},
		{"base/5/16384_vm", walmap.RelFork{Spc: 1663, DB: 5, Rel: 16384, Fork: walmap.ForkVM}, 0, true},
		{"base/5/16384_fsm.1", walmap.RelFork{Spc: 1663, DB: 5, Rel: 16384, Fork: walmap.ForkFSM}, pg.RelSegBlocks, true},
		{"global/1262", walmap.RelFork{Spc: 1664, DB: 0, Rel: 1262}, 0, true},
		{"pg_tblspc/16400/PG_15_202209061/16401/16402_init", walmap.RelFork{Spc: 16400, DB: 16401, Rel: 16402, Fork: walmap.ForkInit}, 0, true},
		{"global/pg_control", walmap.RelFork{}, 0, false},
		{"base/5/PG_VERSION", walmap.RelFork{}, 0, false},
		{"pg_xact/0000", walmap.RelFork{}, 0, false},
		{"base/5/pg_filenode.map", walmap.RelFork{}, 0, false},
	} {
		k, first, ok := relFile(c.rel)
		if ok != c.ok || (ok && (k != c.k || first != c.first)) {
			t.Errorf("relFile(%q) = %v %d %v, want %v %d %v", c.rel, k, first, ok, c.k, c.first, c.ok)
		}
	}
}

// refFile is a reference's entry for a file of size bytes cut into
// blocks of bs, every block hashed.
func refFile(size, bs int64, small bool) *repo.File {
	f := &repo.File{Size: size}
	if small {
		f.BlockSize = bs
	}
	for off := int64(0); off < size; off += bs {
		b := repo.BlockRef{FileOffset: off, Size: min(bs, size-off)}
		b.SetDigest(small, bytes.Repeat([]byte{1}, map[bool]int{true: 16, false: 32}[small]))
		f.Blocks = append(f.Blocks, b)
	}
	return f
}

func readBlocks(fr *fileReads) []int {
	var out []int
	for i, r := range fr.read {
		if r {
			out = append(out, i)
		}
	}
	return out
}

// The decision per file: mapped pages select the stored blocks holding
// them; a limit and growth past the reference's length add every block
// from there; new files, other forks, database events, a limit at 0 and
// another cut leave the file to the hash rule.
func TestMapModeDecide(t *testing.T) {
	rel := walmap.RelFork{Spc: 1663, DB: 5, Rel: 16384}
	at := func(r uint32) walmap.RelFork { k := rel; k.Rel = r; return k }
	m := &walmap.Map{Forks: []walmap.Fork{
		{RelFork: rel, Limit: walmap.NoLimit, Blocks: []uint32{3, 4, 200, pg.RelSegBlocks + 7}},
		{RelFork: at(16385), Limit: 30, Blocks: []uint32{2}},
		{RelFork: at(16386), Limit: 0},
	}, Events: []walmap.Event{{Kind: walmap.EventDBCreateFileCopy, Spc: 1663, DB: 6}}}
	p := newMapPlan(m, 0x100028, 0x200000)
	const k8, k16 = 8 << 10, 16 << 10
	size := int64(256 * pg.BlockSize)

	// 16 KiB blocks: pages 3 and 4 are blocks 1 and 2, page 200 block 100.
	fr, why := p.decide("base/5/16384", size, refFile(size, k16, true), k16, k16, 64, k16)
	if fr == nil || !slices.Equal(readBlocks(fr), []int{1, 2, 100}) || !slices.Equal(fr.mapped, []uint32{3, 4, 200}) {
		t.Fatalf("mapped pages: %v %q; want blocks 1, 2, 100 read", fr, why)
	}
	// The file's segment 1 holds block RelSegBlocks+7 as its page 7.
	fr, _ = p.decide("base/5/16384.1", size, refFile(size, k8, true), k8, k8, 128, k8)
	if fr == nil || !slices.Equal(readBlocks(fr), []int{7}) {
		t.Fatalf("segment file .1: %v; want its block 7 read", fr)
	}
	// Grown by 3 pages past the reference: those are read too.
	fr, _ = p.decide("base/5/16384", size+3*pg.BlockSize, refFile(size, k8, true), k8, k8, 128, k8)
	if fr == nil || !slices.Equal(readBlocks(fr), []int{3, 4, 200, 256, 257, 258}) {
		t.Fatalf("grown file: %v; want the mapped blocks and the 3 new ones", readBlocks(fr))
	}
	// Truncated to 30 in the range (and re-extended to 40): 30.. are read,
	// never taken from the reference.
	fr, _ = p.decide("base/5/16385", 40*pg.BlockSize, refFile(64*pg.BlockSize, k8, true), k8, k8, 128, k8)
	want := []int{2}
	for b := 30; b < 40; b++ {
		want = append(want, b)
	}
	if fr == nil || !slices.Equal(readBlocks(fr), want) || fr.explainFrom != 30 {
		t.Fatalf("truncated file: %v; want %v", readBlocks(fr), want)
	}
	// A whole-block file (one block): a mapped page reads the block.
	small := int64(64 * pg.BlockSize)
	fr, _ = p.decide("base/5/16384", small, refFile(small, 4<<20, false), 4<<20, 4<<20, 1, 0)
	if fr == nil || !slices.Equal(readBlocks(fr), []int{0}) {
		t.Fatalf("whole-block file: %v; want its one block read", fr)
	}
	// Unmapped and unchanged in size: nothing is read.
	fr, _ = p.decide("base/5/16399", size, refFile(size, k8, true), k8, k8, 128, k8)
	if fr == nil || len(readBlocks(fr)) != 0 {
		t.Fatalf("unmapped file: %v; want nothing read", fr)
	}
	// A reference block without a hash cannot stand for the block.
	rf := refFile(size, k8, true)
	rf.Blocks[9].ClearDigest()
	fr, _ = p.decide("base/5/16399", size, rf, k8, k8, 128, k8)
	if fr == nil || !slices.Equal(readBlocks(fr), []int{9}) {
		t.Fatalf("reference block without hash: %v; want it read", readBlocks(fr))
	}

	for _, c := range []struct {
		rel  string
		rf   *repo.File
		bs   int64
		want string
	}{
		{"base/5/16384_fsm", refFile(size, k8, true), k8, "fsm, vm or init fork"},
		{"base/5/16384_vm", refFile(size, k8, true), k8, "fsm, vm or init fork"},
		{"base/5/16384", nil, k8, "new file"},
		{"base/6/16384", refFile(size, k8, true), k8, "database or tablespace"},
		{"base/5/16386", refFile(size, k8, true), k8, "created, dropped or truncated"},
		{"base/5/16384", refFile(size, k16, true), k8, "cut into other blocks"},
		{"pg_xact/0000", refFile(size, k8, true), k8, "not a relation file"},
		{"global/pg_control", refFile(size, k8, true), k8, "not a relation file"},
	} {
		fr, why := p.decide(c.rel, size, c.rf, k16, c.bs, 1, c.bs)
		if c.rf != nil && c.rf.BlockSize == k8 {
			fr, why = p.decide(c.rel, size, c.rf, k8, c.bs, 1, c.bs)
		}
		if fr != nil || !strings.Contains(why, c.want) {
			t.Errorf("%s: %v %q; want the hash rule (%q)", c.rel, fr, why, c.want)
		}
	}
}

// lsnPage is one 8 KiB heap-like page with page LSN lsn and content from seed.
func lsnPage(lsn pg.LSN, seed uint64) []byte {
	p := randomBytes(seed, pg.BlockSize)
	binary.LittleEndian.PutUint32(p[0:], uint32(lsn>>32))
	binary.LittleEndian.PutUint32(p[4:], uint32(lsn))
	binary.LittleEndian.PutUint16(p[12:], 40)   // pd_lower
	binary.LittleEndian.PutUint16(p[14:], 4000) // pd_upper: not a new page
	return p
}

func pages(n int, lsn pg.LSN, seed uint64) []byte {
	var out []byte
	for i := range n {
		out = append(out, lsnPage(lsn, seed*1000+uint64(i))...)
	}
	return out
}

// mapEnv is a data directory of relation files, a full backup of it at
// LSN 0/100028 (1 MiB WAL segments), and the WAL segment 1 it can map.
type mapEnv struct {
	t    *testing.T
	r    *repo.Repository
	dir  string
	o    BackupOptions
	full *repo.Manifest
	si   pg.ServerInfo
}

const (
	oldLSN  = pg.LSN(0x50000)  // pages before the full backup
	fromLSN = pg.LSN(0x100028) // the full's start
	inLSN   = pg.LSN(0x150000) // a change between the two backups
	toLSN   = pg.LSN(0x200000) // the incremental's start: segment 1 ends
)

func newMapEnv(t *testing.T, checksums bool) *mapEnv {
	t.Helper()
	e := &mapEnv{t: t, dir: t.TempDir(), si: pg.ServerInfo{Version: 150000, SystemID: 7, SegmentSize: 1 << 20, Checksums: checksums}}
	e.si.DataDir = e.dir
	e.r, _, _ = newMemRepo(t)
	e.o = BackupOptions{Workers: 2, Writers: 2, ChecksumWarnOnly: true}.withDefaults()
	for rel, data := range map[string][]byte{
		"PG_VERSION":        []byte("15\n"),
		"global/pg_control": randomBytes(11, 8192),
		"base/5/16384":      pages(256, oldLSN, 1), // 2 MiB: 8 KiB blocks
		"base/5/16384_fsm":  pages(3, 0, 2),
		"base/5/16384_vm":   pages(1, 0, 3),
		"base/5/16385":      pages(64, oldLSN, 4), // whole-block file (512 KiB)
		"base/5/16386":      pages(160, oldLSN, 5),
		"base/5/16387":      pages(160, oldLSN, 6), // truncated and re-extended
		"base/5/16389":      pages(160, oldLSN, 7), // untouched
		"base/6/16384":      pages(160, oldLSN, 8), // under a database event
		"global/1262":       pages(2, oldLSN, 9),
		"pg_xact/0000":      randomBytes(10, 8192),
	} {
		writeFile(t, filepath.Join(e.dir, filepath.FromSlash(rel)), data)
	}
	ageFiles(t, e.dir)
	full, err := writeBackup(context.Background(), e.r, e.o, e.run("20261201T000000Z-aaaa", fromLSN), stopAfter(fromLSN), discard())
	if err != nil {
		t.Fatal(err)
	}
	e.full = full
	return e
}

func (e *mapEnv) run(id string, start pg.LSN) backupRun {
	return backupRun{id: id, start: time.Now(), startLSN: start, timeline: 1, pgdata: e.dir, server: e.si}
}

// stopAfter is stopAt with the stop LSN just past start, as in these
// 1 MiB-segment tests a backup ends soon after it starts (the mtime
// cross-checks look between a reference's stop and the next start).
func stopAfter(start pg.LSN) func(*repo.Manifest) error {
	return func(m *repo.Manifest) error {
		stopAt(m)
		m.StopLSN = (start + 0x100).String()
		return nil
	}
}

func (e *mapEnv) path(rel string) string { return filepath.Join(e.dir, filepath.FromSlash(rel)) }

func (e *mapEnv) read(rel string) []byte {
	b, err := os.ReadFile(e.path(rel))
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// setPage rewrites page n of rel.
func (e *mapEnv) setPage(rel string, n int, p []byte) {
	e.t.Helper()
	data := e.read(rel)
	if len(data) < (n+1)*pg.BlockSize {
		data = append(data, make([]byte, (n+1)*pg.BlockSize-len(data))...)
	}
	copy(data[n*pg.BlockSize:], p)
	writeFile(e.t, e.path(rel), data)
}

var walSeg1, _ = pg.ParseWALFileName("000000010000000000000001")

// segmentMap is a map of segment 1 (bytes data) with forks and events.
func segmentMap(data []byte, forks []walmap.Fork, events []walmap.Event) *walmap.Map {
	m := &walmap.Map{ParserVersion: walmap.ParserVersion, WALMagic: 0xD110, SystemID: 7, Timeline: 1, SegmentSize: 1 << 20,
		WALBlockSize: 8192, Start: 0x100000, End: 0x200000, Forks: forks, Events: events}
	m.SegmentSHA256 = sha256.Sum256(data)
	return m
}

// archive stores segment 1 and, if m is set, its map.
func (e *mapEnv) archive(data []byte, m *walmap.Map) {
	e.t.Helper()
	ctx := context.Background()
	if _, err := e.r.PutWAL(ctx, walSeg1, bytes.NewReader(data), int64(len(data))); err != nil {
		e.t.Fatal(err)
	}
	if m != nil {
		if err := e.r.PutWALMap(ctx, walSeg1, m); err != nil {
			e.t.Fatal(err)
		}
	}
}

func fork(rel uint32, limit uint32, blocks ...uint32) walmap.Fork {
	return walmap.Fork{RelFork: walmap.RelFork{Spc: 1663, DB: 5, Rel: rel}, Limit: limit, Blocks: blocks}
}

// changes applies the changes the full map below describes, and returns
// what the data directory holds then.
func (e *mapEnv) changes() {
	e.setPage("base/5/16384", 3, lsnPage(inLSN, 100))
	e.setPage("base/5/16384", 200, lsnPage(inLSN, 101))
	// A hint-bit-like change: content differs, LSN old, not in WAL. Map
	// mode does not read it (the reference's page is as good).
	e.setPage("base/5/16384", 100, lsnPage(oldLSN, 102))
	e.setPage("base/5/16384_fsm", 1, lsnPage(0, 103))
	e.setPage("base/5/16385", 5, lsnPage(inLSN, 104))
	e.setPage("base/5/16386", 17, lsnPage(inLSN, 105))
	e.setPage("base/5/16386", 160, lsnPage(inLSN, 106)) // extended
	e.setPage("base/5/16386", 161, make([]byte, pg.BlockSize))
	// Truncated to 100, then extended back to 150: pages 100.. are new.
	data := e.read("base/5/16387")[:150*pg.BlockSize]
	for n := 100; n < 150; n++ {
		copy(data[n*pg.BlockSize:], lsnPage(inLSN, 200+uint64(n)))
	}
	writeFile(e.t, e.path("base/5/16387"), data)
	e.setPage("base/6/16384", 0, lsnPage(oldLSN, 107)) // under CREATE DATABASE
	writeFile(e.t, e.path("base/5/16390"), pages(3, inLSN, 108))
	writeFile(e.t, e.path("pg_xact/0000"), randomBytes(109, 8192))
}

func (e *mapEnv) fullMap(data []byte) *walmap.Map {
	return segmentMap(data, []walmap.Fork{
		fork(16384, walmap.NoLimit, 3, 200),
		fork(16385, walmap.NoLimit, 5),
		fork(16386, walmap.NoLimit, 17, 160),
		fork(16387, 100),
		fork(16390, 0, 0, 1, 2),
	}, []walmap.Event{{LSN: 0x180000, Kind: walmap.EventDBCreateFileCopy, Spc: 1663, DB: 6, SrcSpc: 1663, SrcDB: 1}})
}

// expected is what each file of the incremental must restore to: the live
// file, except pages map mode rightly took from the reference.
func (e *mapEnv) expected(skipped map[string][]int) map[string][]byte {
	want := map[string][]byte{}
	filepath.Walk(e.dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.IsDir() && info.Name() == "pg_wal" {
			return filepath.SkipDir
		}
		if err == nil && info.Mode().IsRegular() {
			rel, _ := filepath.Rel(e.dir, p)
			want[filepath.ToSlash(rel)] = e.read(filepath.ToSlash(rel))
		}
		return nil
	})
	fullData := readChunked(e.t, e.r, e.full.ID)
	for rel, pgs := range skipped {
		for _, n := range pgs {
			copy(want[rel][n*pg.BlockSize:(n+1)*pg.BlockSize], fullData[rel][n*pg.BlockSize:])
		}
	}
	return want
}

func (e *mapEnv) incr(id string, start pg.LSN) (*repo.Manifest, error) {
	return writeBackup(context.Background(), e.r, e.o, e.run(id, start), stopAfter(start), discard())
}

// Map mode reads only the blocks the map names plus what the rules
// require, takes the rest from the reference (a page changed without WAL
// comes from the reference: proof it was not read), and restores to
// exactly that; backup show's summary says map mode.
func TestMapModeReadsOnlyMappedBlocks(t *testing.T) {
	e := newMapEnv(t, false)
	e.changes()
	seg := randomBytes(50, 1<<20)
	e.archive(seg, e.fullMap(seg))
	inc, err := e.incr("20261201T000100Z-bbbb", toLSN)
	if err != nil {
		t.Fatal(err)
	}
	c := inc.Capture
	if inc.Type != TypeIncr || c == nil || c.Mode != CaptureMap || c.Fallback != "" || c.MapFrom != fromLSN.String() || c.MapTo != toLSN.String() {
		t.Fatalf("incremental: type %s capture %+v; want map mode over %s..%s", inc.Type, c, fromLSN, toLSN)
	}
	s, err := e.r.ReadSummary(context.Background(), inc.ID)
	if err != nil || s.Capture == nil || s.Capture.Mode != CaptureMap {
		t.Fatalf("summary capture %+v, %v; want map mode recorded", s.Capture, err)
	}
	sameFiles(t, "map-mode incremental", readChunked(t, e.r, inc.ID), e.expected(map[string][]int{"base/5/16384": {100}}))

	// What was read: 16384 blocks 3 and 200 (8 KiB each); 16385 whole
	// (one block); 16386 blocks 17, 160, 161; 16387 pages 100..149; the
	// FSM, VM? (unchanged: unread), base/6/16384, new 16390, pg_xact
	// whole (hash rule).
	want := int64(2*8192 + 64*8192 + 3*8192 + 50*8192 + 3*8192 + 160*8192 + 3*8192 + 8192)
	if inc.BytesRead != want {
		t.Errorf("bytes read %d, want %d", inc.BytesRead, want)
	}
	if c.MappedPages != 2+1+2 || c.SampledPages == 0 {
		t.Errorf("capture %+v: want 5 mapped pages checked and unread pages sampled", c)
	}
}

// Every reason map mode cannot run leaves the whole backup to hash mode,
// which says why and still takes every change.
func TestMapModeFallbacks(t *testing.T) {
	for _, c := range []struct {
		name   string
		setup  func(e *mapEnv, seg []byte)
		run    func(e *mapEnv) backupRun
		want   string
		typ    string
		failed bool
	}{
		{name: "segment without a map", setup: func(e *mapEnv, seg []byte) { e.archive(seg, nil) }, want: "has no block map"},
		{name: "segment missing", setup: func(e *mapEnv, seg []byte) {}, want: "000000010000000000000001 is not archived"},
		{name: "map of other bytes", setup: func(e *mapEnv, seg []byte) {
			e.archive(seg, e.fullMap(randomBytes(51, 1<<20)))
		}, want: "is of other bytes"},
		{name: "undecodable map", setup: func(e *mapEnv, seg []byte) {
			e.archive(seg, nil)
			if err := e.r.PutObject(context.Background(), repo.WALMapObjectName(walSeg1), []byte("PGKM garbage"), storage.PutOptions{}); err != nil {
				t.Fatal(err)
			}
		}, want: "block map of 000000010000000000000001: "},
		{name: "unknown marker", setup: func(e *mapEnv, seg []byte) {
			m := e.fullMap(seg)
			m.Unknown = []walmap.Unknown{{Start: 0x170000, End: 0x170100, Reason: walmap.UnknownSpecial, RmID: 130}}
			e.archive(seg, m)
		}, want: "special-rel-update"},
		{name: "timeline mismatch", setup: func(e *mapEnv, seg []byte) { e.archive(seg, e.fullMap(seg)) },
			run:  func(e *mapEnv) backupRun { r := e.run("20261201T000100Z-bbbb", toLSN); r.timeline = 2; return r },
			want: "timeline mismatch", typ: TypeChecksum},
		{name: "check B: a change the map missed", setup: func(e *mapEnv, seg []byte) {
			m := e.fullMap(seg)
			m.Forks[1].Blocks = nil // page 5 of 16385 changed: 64 pages, all sampled
			e.archive(seg, m)
		}, want: "check B: block 5 of base/5/16385"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newMapEnv(t, false)
			e.changes()
			seg := randomBytes(50, 1<<20)
			c.setup(e, seg)
			run := e.run("20261201T000100Z-bbbb", toLSN)
			if c.run != nil {
				run = c.run(e)
			}
			inc, err := writeBackup(context.Background(), e.r, e.o, run, stopAfter(run.startLSN), discard())
			if err != nil {
				t.Fatal(err)
			}
			typ := TypeIncr
			if c.typ != "" {
				typ = c.typ
			}
			if inc.Type != typ || inc.Capture == nil || inc.Capture.Mode != CaptureHash || !strings.Contains(inc.Capture.Fallback, c.want) {
				t.Fatalf("type %s capture %+v; want hash mode because %q", inc.Type, inc.Capture, c.want)
			}
			// Hash mode reads changed files whole: every change is in, the
			// page changed without WAL too.
			sameFiles(t, "hash-mode incremental", readChunked(t, e.r, inc.ID), e.expected(nil))
		})
	}
}

// Check A: with data checksums, many mapped pages older than the map's
// start mean the map's blocks are not the file's: hash mode.
func TestMapModeCheckA(t *testing.T) {
	e := newMapEnv(t, true)
	e.changes()
	seg := randomBytes(50, 1<<20)
	m := e.fullMap(seg)
	m.Forks[0].Blocks = []uint32{3, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 200}
	e.archive(seg, m)
	inc, err := e.incr("20261201T000100Z-bbbb", toLSN)
	if err != nil {
		t.Fatal(err)
	}
	if c := inc.Capture; c == nil || c.Mode != CaptureHash || !strings.Contains(c.Fallback, "check A: 10 of 12 pages") {
		t.Fatalf("capture %+v; want hash mode by check A", inc.Capture)
	}
	sameFiles(t, "hash-mode incremental", readChunked(t, e.r, inc.ID), e.expected(nil))
}

// A file the mtime rule takes unread whose mapped page is newer than the
// reference's start: mtimes lie, and the backup fails as the LSN
// cross-check makes it.
func TestMapModeMTimeContradiction(t *testing.T) {
	e := newMapEnv(t, false)
	st, err := os.Stat(e.path("base/5/16389"))
	if err != nil {
		t.Fatal(err)
	}
	e.setPage("base/5/16389", 50, lsnPage(inLSN, 300))
	os.Chtimes(e.path("base/5/16389"), st.ModTime(), st.ModTime())
	seg := randomBytes(50, 1<<20)
	e.archive(seg, segmentMap(seg, []walmap.Fork{fork(16389, walmap.NoLimit, 50)}, nil))
	_, err = e.incr("20261201T000100Z-bbbb", toLSN)
	if err == nil || !strings.Contains(err.Error(), "base/5/16389: block 50") || !strings.Contains(err.Error(), "--type checksum") {
		t.Fatalf("incremental over a change hidden by its mtime: %v; want the maps' contradiction reported", err)
	}
}

// The segments at the end of the range not archived yet (the one holding
// the backup's start, and one the archiver is still on) are mapped from
// pg_wal, and the commit checks those bytes against the archived segments
// (a mismatch fails the backup). wal-push pushes ahead, so a segment not
// archived may come before one that is ("pushed ahead": segment 2 is
// archived with its map, 1 and 3 are not).
func TestMapModeLocalSegments(t *testing.T) {
	for _, c := range []struct {
		name    string
		first   uint64 // the first segment read from pg_wal
		n       int    // segments in pg_wal
		ahead   bool   // the middle one is archived already
		corrupt bool
	}{{"start segment", 2, 1, false, false}, {"start segment differs", 2, 1, false, true}, {"two segments", 1, 2, false, false}, {"pushed ahead", 1, 3, true, false}} {
		t.Run(c.name, func(t *testing.T) {
			e := newMapEnv(t, false)
			if c.first == 2 {
				e.changes()
				seg := randomBytes(50, 1<<20)
				e.archive(seg, e.fullMap(seg))
			} else {
				// Only what the generated WAL maps (16384..16386) changes.
				e.setPage("base/5/16384", 3, lsnPage(inLSN, 100))
			}
			names, segs := walmaptest.Segments(7, 1, 1<<20, c.first, c.n)
			for i := range names {
				writeFile(t, e.path("pg_wal/"+names[i]), segs[i])
			}
			if c.ahead {
				wf, _ := pg.ParseWALFileName(names[1])
				m, err := walmap.Build(segs[1], names[1], 1<<20)
				if err != nil {
					t.Fatal(err)
				}
				m.SegmentSHA256 = sha256.Sum256(segs[1])
				if _, err := e.r.PutWAL(context.Background(), wf, bytes.NewReader(segs[1]), int64(len(segs[1]))); err != nil {
					t.Fatal(err)
				}
				if err := e.r.PutWALMap(context.Background(), wf, m); err != nil {
					t.Fatal(err)
				}
			}
			start := pg.LSN(uint64(c.first)+uint64(c.n)-1)<<20 + 0x100
			stop := func(m *repo.Manifest) error {
				stopAt(m)
				for i := range names {
					if c.ahead && i == 1 {
						continue
					}
					wf, _ := pg.ParseWALFileName(names[i])
					data := segs[i]
					if c.corrupt {
						data = bytes.Clone(data)
						data[0x80] ^= 1
					}
					if _, err := e.r.PutWAL(context.Background(), wf, bytes.NewReader(data), int64(len(data))); err != nil {
						return err
					}
				}
				return nil
			}
			inc, err := writeBackup(context.Background(), e.r, e.o, e.run("20261201T000100Z-bbbb", start), stop, discard())
			if c.corrupt {
				if err == nil || !strings.Contains(err.Error(), "differ from pg_wal's copy") {
					t.Fatalf("archived start segment differing from pg_wal's: %v; want the backup refused", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cp := inc.Capture; cp == nil || cp.Mode != CaptureMap || cp.MapTo != start.String() {
				t.Fatalf("capture %+v; want map mode up to %s with pg_wal's segments", inc.Capture, start)
			}
			// pg_wal's segments map every page of 16384..16386: all are read.
			sameFiles(t, "map-mode incremental", readChunked(t, e.r, inc.ID), e.expected(nil))
		})
	}
}

// A checksum backup reads everything and audits the maps: a change the
// map does not name is reported; a complete map audits ok.
func TestMapModeAudit(t *testing.T) {
	for _, complete := range []bool{true, false} {
		e := newMapEnv(t, false)
		e.changes()
		seg := randomBytes(50, 1<<20)
		m := e.fullMap(seg)
		if !complete {
			m.Forks[0].Blocks = []uint32{3}
		}
		e.archive(seg, m)
		o := e.o
		o.Type = TypeChecksum
		inc, err := writeBackup(context.Background(), e.r, o, e.run("20261201T000100Z-bbbb", toLSN), stopAfter(toLSN), discard())
		if err != nil {
			t.Fatal(err)
		}
		c := inc.Capture
		switch {
		case c == nil || c.Mode != CaptureHash:
			t.Fatalf("checksum backup capture %+v", c)
		case complete && (c.Audit != "ok" || c.AuditMisses != 0):
			t.Errorf("complete map: audit %+v; want ok", c)
		case !complete && (c.Audit != "misses" || c.AuditMisses != 1 || len(c.AuditExamples) != 1 || !strings.Contains(c.AuditExamples[0], "base/5/16384 block 200")):
			t.Errorf("map without block 200: audit %+v; want that one miss", c)
		}
		sameFiles(t, "checksum backup", readChunked(t, e.r, inc.ID), e.expected(nil))
	}
}

// Map mode reads by chunk-sized windows: a window at least half mapped is
// read whole and in order (its unmapped blocks compared by hash, so a
// change outside the map there is stored too); a sparse one reads only
// its mapped blocks, and their changed blocks go into one chunk.
func TestMapModeDenseAndSparseWindows(t *testing.T) {
	e := newMapEnv(t, false)
	const rel = "base/5/16389" // 160 pages: 8 KiB blocks, windows of 128
	var mapped []uint32
	for n := range 100 {
		e.setPage(rel, n, lsnPage(inLSN, 300+uint64(n)))
		mapped = append(mapped, uint32(n))
	}
	e.setPage(rel, 130, lsnPage(inLSN, 430))
	e.setPage(rel, 150, lsnPage(inLSN, 450))
	mapped = append(mapped, 130, 150)
	e.setPage(rel, 110, lsnPage(oldLSN, 410)) // unmapped, in the dense window
	e.setPage(rel, 140, lsnPage(oldLSN, 440)) // unmapped, in the sparse one
	seg := randomBytes(52, 1<<20)
	e.archive(seg, segmentMap(seg, []walmap.Fork{fork(16389, walmap.NoLimit, mapped...)}, nil))
	inc, err := e.incr("20261201T000100Z-bbbb", toLSN)
	if err != nil {
		t.Fatal(err)
	}
	if c := inc.Capture; c == nil || c.Mode != CaptureMap {
		t.Fatalf("capture %+v; want map mode", c)
	}
	if want := int64(128*8192 + 2*8192); inc.BytesRead != want {
		t.Errorf("bytes read %d, want %d (window 0 whole, 2 blocks of window 1)", inc.BytesRead, want)
	}
	sameFiles(t, "windows", readChunked(t, e.r, inc.ID), e.expected(map[string][]int{rel: {140}}))
	for _, f := range inc.Files {
		if f.Path != rel {
			continue
		}
		a, b := f.Blocks[130], f.Blocks[150]
		if a.Pack != b.Pack || a.Offset != b.Offset {
			t.Errorf("blocks 130 and 150 stored apart (%d@%d, %d@%d); want one chunk", a.Pack, a.Offset, b.Pack, b.Offset)
		}
	}
}

// A block map mode reads for a mapped page is stored as a composite of
// the pages that changed and slices of the reference's copy of the
// others (docs/format.md "Composite blocks"): an unmapped page whose
// content moved without WAL comes from the reference (it was not
// stored), an unmapped page with an LSN inside the range and a new
// (zero) page are stored; a second incremental splits the composite
// again; both restore exactly, verify clean, and the second still does
// once the full and the first incremental are deleted.
func TestMapModeStoresOnlyChangedPages(t *testing.T) {
	ctx := context.Background()
	e := newMapEnv(t, false)
	const rel = "base/5/16385"                    // 64 pages, one whole block of 512 KiB
	e.setPage(rel, 5, lsnPage(inLSN, 500))        // mapped
	e.setPage(rel, 6, lsnPage(oldLSN, 501))       // hint-bit-like: from the reference
	e.setPage(rel, 7, lsnPage(inLSN, 502))        // changed, the maps miss it: stored
	e.setPage(rel, 9, make([]byte, pg.BlockSize)) // a new page: stored
	seg := randomBytes(53, 1<<20)
	e.archive(seg, segmentMap(seg, []walmap.Fork{fork(16385, walmap.NoLimit, 5)}, nil))
	inc, err := e.incr("20261201T000100Z-bbbb", toLSN)
	if err != nil {
		t.Fatal(err)
	}
	c := inc.Capture
	if c == nil || c.Mode != CaptureMap || c.SplitBlocks != 1 || c.UnmappedNewPages != 1 {
		t.Fatalf("capture %+v; want map mode, 1 split block, 1 unmapped new page", c)
	}
	want1 := e.expected(map[string][]int{rel: {6}})
	sameFiles(t, "first incremental", readChunked(t, e.r, inc.ID), want1)
	blk := fileOf(t, inc, rel).Blocks[0]
	if !blk.Composite() || len(blk.Parts) != 7 || blk.Digest() != "" {
		t.Fatalf("block %+v; want a composite of 7 parts without a hash", blk)
	}
	var own int64
	for _, p := range inc.Packs {
		if strings.HasPrefix(p.Name, repo.BackupPrefix(inc.ID)) {
			own += p.Size
		}
	}
	// Stored: pages 5, 7 and 9 of the 512 KiB block, plus the small
	// files the hash rule reads (pg_control, pg_xact: 16 KiB of random
	// bytes) and headers; the whole block would be 512 KiB.
	if own > 96<<10 {
		t.Errorf("the incremental stored %d bytes of packs; want only the changed pages", own)
	}
	if probs := e.r.VerifyBackup(ctx, inc.ID); len(probs) > 0 {
		t.Fatalf("verify: %v", probs)
	}

	// The next incremental maps page 20 of the composite.
	const lsn2, to2 = pg.LSN(0x250000), pg.LSN(0x300000)
	e.setPage(rel, 20, lsnPage(lsn2, 503))
	wf2, _ := pg.ParseWALFileName("000000010000000000000002")
	seg2 := randomBytes(54, 1<<20)
	m2 := segmentMap(seg2, []walmap.Fork{fork(16385, walmap.NoLimit, 20)}, nil)
	m2.Start, m2.End = 0x200000, 0x300000
	if _, err := e.r.PutWAL(ctx, wf2, bytes.NewReader(seg2), int64(len(seg2))); err != nil {
		t.Fatal(err)
	}
	if err := e.r.PutWALMap(ctx, wf2, m2); err != nil {
		t.Fatal(err)
	}
	inc2, err := e.incr("20261201T000200Z-cccc", to2)
	if err != nil {
		t.Fatal(err)
	}
	if c := inc2.Capture; c == nil || c.Mode != CaptureMap || c.SplitBlocks != 1 || inc2.Reference != inc.ID {
		t.Fatalf("second incremental: reference %s capture %+v; want map mode on %s, 1 split block", inc2.Reference, c, inc.ID)
	}
	want2 := e.expected(map[string][]int{rel: {6}})
	sameFiles(t, "second incremental", readChunked(t, e.r, inc2.ID), want2)
	if b := fileOf(t, inc2, rel).Blocks[0]; !b.Composite() || len(b.Parts) != 9 {
		t.Fatalf("block %+v; want a composite of 9 parts", b)
	}
	for _, id := range []string{e.full.ID, inc.ID} {
		if err := e.r.DeleteBackup(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	got, err := e.r.ReadManifest(ctx, inc2.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Format != 7 {
		t.Errorf("manifest format %d, want 7", got.Format)
	}
	sameFiles(t, "second incremental, its references deleted", readChunked(t, e.r, inc2.ID), want2)
	if probs := e.r.VerifyBackup(ctx, inc2.ID); len(probs) > 0 {
		t.Fatalf("verify after the deletes: %v", probs)
	}
}

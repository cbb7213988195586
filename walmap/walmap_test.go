package walmap

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/pgkeep/pgkeep/pg"
)

// Tests decode small maps only; a low bound keeps fuzzed inputs from
// allocating the production bound's 128 MiB each.
func init() { maxDecodeBlocks = 1 << 16 }

var (
	relA = RelFork{Spc: 1663, DB: 5, Rel: 16384}
	relB = RelFork{Spc: 1663, DB: 5, Rel: 16390}
)

func collect(t *testing.T, data []byte, name string, segSize int) (*Walked, []Record) {
	t.Helper()
	var recs []Record
	w, err := Walk(data, name, uint32(segSize), func(r *Record) error {
		c := *r
		c.Blocks = slices.Clone(r.Blocks)
		c.Main = bytes.Clone(r.Main)
		recs = append(recs, c)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return w, recs
}

func build(t *testing.T, data []byte, name string, segSize int) *Map {
	t.Helper()
	m, err := Build(data, name, uint32(segSize))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestCRC32CCombine(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 50; i++ {
		a, b := make([]byte, r.IntN(3000)), make([]byte, r.IntN(3000))
		for j := range a {
			a[j] = byte(r.Uint32())
		}
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		want := crc32.Checksum(append(slices.Clone(a), b...), crc32.MakeTable(crc32.Castagnoli))
		if got := crc32cCombine(crc32c(a), crc32c(b), int64(len(b))); got != want {
			t.Fatalf("combine of %d+%d bytes: %08x, want %08x", len(a), len(b), got, want)
		}
	}
}

// TestBlockRefDecoding: every field of the block headers, per version, as
// DecodeXLogRecord reads them.
func TestBlockRefDecoding(t *testing.T) {
	img := bytes.Repeat([]byte{0xAB}, 8192-1000)
	top := uint32(4242)
	blocks := []tBlock{
		{id: 0, rel: &relA, blk: 7, data: []byte("abc"), image: img, bimg: 0x1 | 0x2, holeOff: 200}, // hole, apply (15 numbering)
		{id: 1, fork: ForkVM, blk: 9}, // SAME_REL, another fork
		{id: 3, rel: &relB, blk: 0xFFFFFFFE, image: make([]byte, 300), bimg: 0x1 | 0x8, holeOff: 40, holeLen: 5000, willInit: true}, // lz4 with hole
		{id: 4, blk: 11, image: make([]byte, 100), bimg: 0x10},                                                                      // zstd, no hole, SAME_REL of relB
		{id: 5, blk: 12, image: make([]byte, 8192)},                                                                                 // plain full image
	}
	g := newGen(0xD110)
	g.add(mkRecord(10, 0x20, blocks, []byte("main data"), 77, &top))
	g.add(switchRec())
	data, name := g.seg(0)
	w, recs := collect(t, data, name, g.segSize)
	if w.Reason != EndSwitch || len(recs) != 2 {
		t.Fatalf("walk: %s %s, %d records", w.Reason, w.Detail, len(recs))
	}
	r := recs[0]
	if r.RmID != 10 || r.Info != 0x20 || r.XID != 77 || !r.HasTopXID || r.TopXID != top || string(r.Main) != "main data" || !r.Verified {
		t.Fatalf("record %+v", r)
	}
	want := []BlockRef{
		{ID: 0, RelFork: relA, Block: 7, ForkFlags: 0x30, HasImage: true, HasData: true, DataLen: 3, ImageLen: uint16(len(img)), HoleOffset: 200, HoleLen: 1000, BimgInfo: 3, ApplyImage: true},
		{ID: 1, RelFork: RelFork{Spc: 1663, DB: 5, Rel: 16384, Fork: ForkVM}, Block: 9, ForkFlags: 0x82, SameRel: true},
		{ID: 3, RelFork: relB, Block: 0xFFFFFFFE, ForkFlags: 0x50, HasImage: true, WillInit: true, ImageLen: 300, HoleOffset: 40, HoleLen: 5000, BimgInfo: 9, Compression: CompressLZ4},
		{ID: 4, RelFork: relB, Block: 11, ForkFlags: 0x90, SameRel: true, HasImage: true, ImageLen: 100, BimgInfo: 0x10, Compression: CompressZstd},
		{ID: 5, RelFork: relB, Block: 12, ForkFlags: 0x90, SameRel: true, HasImage: true, ImageLen: 8192},
	}
	if !reflect.DeepEqual(r.Blocks, want) {
		t.Fatalf("blocks\n got %+v\nwant %+v", r.Blocks, want)
	}
	// The same bytes under PostgreSQL 13's numbering: 0x2 means compressed
	// there (and 0x8, 0x10 are unknown flags), and block id 252 does not exist.
	g13 := newGen(0xD106)
	g13.add(mkRecord(10, 0, []tBlock{{id: 0, rel: &relA, blk: 1, image: make([]byte, 500), bimg: 0x1 | 0x2 | 0x4, holeOff: 100, holeLen: 3000}}, nil, 1, nil))
	g13.add(mkRecord(10, 0, []tBlock{{id: 0, rel: &relA, blk: 2, data: []byte{1}}}, nil, 1, &top))
	d13, n13 := g13.seg(0)
	w13, r13 := collect(t, d13, n13, g13.segSize)
	if len(r13) != 1 || r13[0].Blocks[0].Compression != CompressPGLZ || !r13[0].Blocks[0].ApplyImage || r13[0].Blocks[0].HoleLen != 3000 {
		t.Fatalf("PG13 image: %+v", r13)
	}
	if w13.Reason != EndInvalid || !strings.Contains(w13.Detail, "invalid block id 252") {
		t.Fatalf("PG13 block id 252: %s %s", w13.Reason, w13.Detail)
	}
}

func TestMalformedBlockHeaders(t *testing.T) {
	for name, rec := range map[string][]byte{
		"same rel first":  mkRecord(10, 0, []tBlock{{id: 0, blk: 1, data: []byte{1}}}, nil, 1, nil),
		"out of order":    mkRecord(10, 0, []tBlock{{id: 2, rel: &relA, blk: 1}, {id: 1, rel: &relA, blk: 2}}, nil, 1, nil),
		"compressed full": mkRecord(10, 0, []tBlock{{id: 0, rel: &relA, blk: 1, image: make([]byte, 8192), bimg: 0x4}}, nil, 1, nil),
		"hole no flag":    mkRecord(10, 0, []tBlock{{id: 0, rel: &relA, blk: 1, image: make([]byte, 8000)}}, nil, 1, nil),
		"two methods":     mkRecord(10, 0, []tBlock{{id: 0, rel: &relA, blk: 1, image: make([]byte, 80), bimg: 0x4 | 0x8}}, nil, 1, nil),
	} {
		g := newGen(0xD110)
		g.add(heapRec(relA, 1))
		g.add(rec)
		data, seg := g.seg(0)
		w, recs := collect(t, data, seg, g.segSize)
		if w.Reason != EndInvalid || len(recs) != 1 {
			t.Errorf("%s: %s %q after %d records", name, w.Reason, w.Detail, len(recs))
		}
		m := build(t, data, seg, g.segSize)
		if len(m.Unknown) != 1 || m.Unknown[0].Reason != UnknownInvalid || m.Unknown[0].End != m.End {
			t.Errorf("%s: markers %+v", name, m.Unknown)
		}
	}
}

// TestCRC: a good record is read; one flipped bit makes the walk stop
// there with an invalid marker to the segment's end, keeping what came before.
func TestCRC(t *testing.T) {
	g := newGen(0xD110)
	g.add(heapRec(relA, 1))
	bad := g.add(heapRec(relA, 2))
	g.add(heapRec(relA, 3))
	data, name := g.seg(0)
	m := build(t, data, name, g.segSize)
	if len(m.Unknown) != 1 || m.Unknown[0].Reason != UnknownEndOfWAL || m.Records != 3 {
		t.Fatalf("good segment: %d records, markers %+v", m.Records, m.Unknown)
	}
	off := int(bad-m.Start) + 30
	data[off] ^= 0x10
	m = build(t, data, name, g.segSize)
	if m.Records != 1 || len(m.Unknown) != 1 || m.Unknown[0] != (Unknown{Start: bad, End: m.End, Reason: UnknownInvalid}) {
		t.Fatalf("flipped bit: %d records, markers %+v", m.Records, m.Unknown)
	}
	if f := m.Fork(relA); f == nil || !slices.Equal(f.Blocks, []uint32{1}) {
		t.Fatalf("forks %+v", m.Forks)
	}
	if err := m.Covers(m.Start, bad); err != nil {
		t.Fatalf("before the bad record: %v", err)
	}
	if err := m.Covers(m.Start, bad+1); err == nil {
		t.Fatal("range with the bad record is covered")
	}
}

// TestPageSpanning: records larger than a page, and headers straddling a
// page boundary, on pages that carry XLP_BKP_REMOVABLE (0x4 in 13-17,
// the flag the design note's first parser misread).
func TestPageSpanning(t *testing.T) {
	g := newGen(0xD110)
	var want []uint32
	for i := uint32(0); i < 40; i++ {
		img := make([]byte, 8192)
		img[0] = byte(i)
		g.add(mkRecord(RmXLOG, 0xA0, []tBlock{{id: 0, rel: &relA, blk: 100 + i, image: img}, {id: 1, blk: 200 + i, image: img}}, nil, 0, nil))
		want = append(want, 100+i, 200+i)
		// Small records of assorted sizes move the next start around, so
		// some headers straddle pages.
		for j := 0; j < int(i%5); j++ {
			g.add(heapRec(relB, i*10+uint32(j)))
		}
	}
	data, name := g.seg(0)
	w, recs := collect(t, data, name, g.segSize)
	if w.Reason != EndOfWAL {
		t.Fatalf("walk: %s %s", w.Reason, w.Detail)
	}
	straddle := 0
	for _, r := range recs {
		if int(r.LSN)%g.page > g.page-recordHeaderSize {
			straddle++
		}
	}
	m := build(t, data, name, g.segSize)
	slices.Sort(want)
	if f := m.Fork(relA); f == nil || !slices.Equal(f.Blocks, want) {
		t.Fatalf("relA blocks %v", f)
	}
	if m.Records != uint64(len(recs)) || len(recs) != 40+80 {
		t.Fatalf("%d records, walk %d", m.Records, len(recs))
	}
	t.Logf("%d records, %d headers straddling a page", len(recs), straddle)
}

// TestSegmentBoundary: records straddling segments, decoded in the first
// one when their headers are there, stitched by Merge (CRC checked) when
// not, a record spanning a whole segment, and a broken stitch.
func TestSegmentBoundary(t *testing.T) {
	g := newGen(0xD110)
	// Fill segment 0 so that a record starts 8 bytes before its end: its
	// header straddles the boundary, only xl_tot_len in segment 0.
	filler := func(end int) {
		for {
			g.pos = maxAlign(g.pos)
			left := end - g.pos
			if left <= 600 {
				break
			}
			g.add(heapRec(relB, uint32(g.pos/8192)))
		}
	}
	filler(g.segSize)
	// Pad with a record that ends exactly where we want the next to start.
	left := g.segSize - maxAlign(g.pos) - 8
	if g.pos%g.page+left > g.page {
		t.Fatalf("test layout: %d left at page offset %d", left, g.pos%g.page)
	}
	g.add(mkRecord(10, 0, nil, make([]byte, left-recordHeaderSize-5), 1, nil))
	straddler := g.add(heapRec(relA, 4242, 4243))
	if int(straddler)%g.segSize != g.segSize-8 {
		t.Fatalf("straddler at %s", straddler)
	}
	// A record of 2.5 segments: it spans segment 2 entirely.
	big := make([]byte, g.segSize*5/2)
	bigLSN := g.add(mkRecord(10, 0, []tBlock{{id: 0, rel: &relA, blk: 9999, data: []byte{1}}}, big, 1, nil))
	g.add(heapRec(relA, 5))
	g.add(switchRec())
	var maps []*Map
	for i := 0; i < 4; i++ {
		data, name := g.seg(i)
		maps = append(maps, build(t, data, name, g.segSize))
	}
	if maps[0].Tail == nil || maps[0].Tail.Applied || maps[0].Tail.LSN != straddler || maps[0].Fork(relA) != nil {
		t.Fatalf("segment 0 tail %s", fragString(maps[0].Tail))
	}
	if maps[1].Head == nil || maps[1].Tail == nil || !maps[1].Tail.Applied || maps[1].Tail.LSN != bigLSN {
		t.Fatalf("segment 1 head %s tail %s", fragString(maps[1].Head), fragString(maps[1].Tail))
	}
	if h := maps[2].Head; h == nil || h.Len >= h.RemLen || maps[2].Records != 0 || maps[2].Tail != nil || len(maps[2].Unknown) != 0 {
		t.Fatalf("segment 2 head %s, %d records, markers %+v", fragString(h), maps[2].Records, maps[2].Unknown)
	}
	if h := maps[3].Head; h == nil || h.Len != h.RemLen || maps[3].Records != 2 || maps[3].Tail != nil {
		t.Fatalf("segment 3 head %s, %d records", fragString(h), maps[3].Records)
	}
	if err := maps[0].Covers(maps[0].Start, maps[0].End); err == nil {
		t.Fatal("segment 0 alone covers its straddling record")
	}
	m, err := Merge(maps...)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Unknown) != 0 || m.Tail != nil {
		t.Fatalf("merged: markers %+v tail %s", m.Unknown, fragString(m.Tail))
	}
	if f := m.Fork(relA); f == nil || !slices.Equal(f.Blocks, []uint32{5, 4242, 4243, 9999}) {
		t.Fatalf("merged relA %+v", f)
	}
	if err := m.Covers(m.Start, m.End); err != nil {
		t.Fatal(err)
	}
	// Any changed byte of the continuation breaks the stitch.
	for at, want := range map[int]pg.LSN{0: straddler, 10: straddler, 1000: bigLSN, 600000: bigLSN} {
		data, name := g.seg(1)
		data = bytes.Clone(data)
		data[longPageHeader+at] ^= 1
		bad := build(t, data, name, g.segSize)
		m, err := Merge(maps[0], bad, maps[2], maps[3])
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Unknown) == 0 || m.Unknown[0].Reason != UnknownStitch || m.Unknown[0].Start != want {
			t.Fatalf("byte %d changed: markers %+v", at, m.Unknown)
		}
	}
	// A hole between maps is a gap marker; overlap is an error.
	m, err = Merge(maps[0], maps[2], maps[3])
	if err != nil || len(m.Unknown) == 0 || m.Unknown[0].Reason != UnknownStitch && m.Unknown[0].Reason != UnknownGap {
		t.Fatalf("gap: %v %+v", err, m)
	}
	if !slices.ContainsFunc(m.Unknown, func(u Unknown) bool { return u.Reason == UnknownGap && u.Start == maps[0].End }) {
		t.Fatalf("no gap marker: %+v", m.Unknown)
	}
	if _, err := Merge(maps[1], maps[0]); err == nil {
		t.Fatal("out-of-order merge accepted")
	}
}

// TestFileEvents: the changes with no block reference.
func TestFileEvents(t *testing.T) {
	g := newGen(0xD110)
	relC := RelFork{Spc: 1663, DB: 5, Rel: 17000}
	g.add(heapRec(relA, 10, 20, 30))
	g.add(smgrTruncateRec(relA, 15, smgrTruncHeap|smgrTruncVM)) // forgets 20 and 30
	g.add(heapRec(relA, 40))                                    // after the truncate: kept
	g.add(heapRec(relB, 1))
	g.add(smgrCreateRec(relC))
	g.add(heapRec(relC, 0))
	g.add(commitRec([]RelFork{relB}, 3))
	g.add(mkRecord(RmDbase, 0x00|xlrSpecialRelUpdate, nil, u32s(16500, 1663, 1, 1663), 0, nil))  // FILE_COPY
	g.add(mkRecord(RmDbase, 0x10|xlrSpecialRelUpdate, nil, u32s(16501, 1663), 0, nil))           // WAL_LOG
	g.add(mkRecord(RmDbase, 0x20|xlrSpecialRelUpdate, nil, u32s(16500, 2, 1663, 16400), 0, nil)) // DROP
	g.add(mkRecord(RmTblspc, tblspcCreate, nil, append(u32s(16400), "/srv/ts\x00"...), 0, nil))
	g.add(mkRecord(RmTblspc, tblspcDrop, nil, u32s(16400), 0, nil))
	custom := g.add(mkRecord(140, 0x10|xlrSpecialRelUpdate, nil, []byte("whatever"), 0, nil))
	g.add(mkRecord(140, 0x10, []tBlock{{id: 0, rel: &relC, blk: 3}}, nil, 0, nil)) // custom rmgr, no special flag: blocks count
	minimal := g.add(mkRecord(RmXLOG, xlogParameterChange, nil, u32s(100, 8, 0, 0, 64, 0, 0), 0, nil))
	g.add(mkRecord(RmXLOG, xlogParameterChange, nil, u32s(100, 8, 10, 0, 64, 1, 0), 0, nil)) // replica: fine
	shortSmgr := g.add(mkRecord(RmSmgr, smgrCreate|xlrSpecialRelUpdate, nil, []byte{1, 2, 3}, 0, nil))
	g.add(switchRec())
	data, name := g.seg(0)
	m := build(t, data, name, g.segSize)
	check := func(k RelFork, limit uint32, blocks ...uint32) {
		t.Helper()
		f := m.Fork(k)
		if f == nil || f.Limit != limit || !slices.Equal(f.Blocks, blocks) {
			t.Errorf("fork %s: %+v, want limit %d blocks %v", k, f, limit, blocks)
		}
	}
	check(relA, 15, 10, 40)
	check(RelFork{Spc: 1663, DB: 5, Rel: 16384, Fork: ForkVM}, 0)
	check(relB, 0)
	for f := uint8(1); f <= maxFork; f++ {
		check(RelFork{Spc: relB.Spc, DB: relB.DB, Rel: relB.Rel, Fork: f}, 0)
	}
	check(relC, 0, 0, 3)
	var kinds []string
	for _, e := range m.Events {
		kinds = append(kinds, e.Kind.String())
	}
	if want := "db-create-file-copy db-create-wal-log db-drop db-drop tablespace-create tablespace-drop"; strings.Join(kinds, " ") != want {
		t.Errorf("events %v", kinds)
	}
	if e := m.Events[0]; e.DB != 16500 || e.Spc != 1663 || e.SrcDB != 1 || e.SrcSpc != 1663 {
		t.Errorf("file copy event %+v", e)
	}
	if e := m.Events[3]; e.DB != 16500 || e.Spc != 16400 {
		t.Errorf("second drop event %+v", e)
	}
	want := []UnknownReason{UnknownSpecial, UnknownWALLevel, UnknownDecode}
	var got []UnknownReason
	for _, u := range m.Unknown {
		got = append(got, u.Reason)
	}
	if !slices.Equal(got, want) || m.Unknown[0].Start != custom || m.Unknown[0].RmID != 140 || m.Unknown[1].Start != minimal || m.Unknown[2].Start != shortSmgr {
		t.Errorf("markers %+v", m.Unknown)
	}
}

// TestEnds: how a walk ends tells a switch from a clean end of WAL from
// garbage, and an unknown version from all three.
func TestEnds(t *testing.T) {
	g := newGen(0xD110)
	g.add(heapRec(relA, 1))
	end := g.add(heapRec(relA, 2))
	endOff := int(end-g.lsn(0)) + len(heapRec(relA, 2))
	g.add(switchRec())
	data, name := g.seg(0)
	sw := build(t, data, name, g.segSize)
	if len(sw.Unknown) != 0 || sw.Records != 3 {
		t.Fatalf("switch: %+v", sw.Unknown)
	}
	noSwitch := bytes.Clone(data)
	clear(noSwitch[maxAlign(endOff):])
	m := build(t, noSwitch, name, g.segSize)
	validEnd := m.Start + pg.LSN(maxAlign(endOff))
	if len(m.Unknown) != 1 || m.Unknown[0] != (Unknown{Start: validEnd, End: m.End, Reason: UnknownEndOfWAL}) {
		t.Fatalf("zeros: %+v", m.Unknown)
	}
	// A truncated copy (cut mid-record) stops at the cut record.
	cut := noSwitch[:endOff-3]
	m = build(t, cut, name, g.segSize)
	if len(m.Unknown) != 1 || m.Unknown[0] != (Unknown{Start: end, End: m.End, Reason: UnknownTruncated}) || m.Records != 1 {
		t.Fatalf("cut: %d records, %+v", m.Records, m.Unknown)
	}
	// Garbage where the next record should be.
	garbage := bytes.Clone(noSwitch)
	copy(garbage[maxAlign(endOff):], "\x30\x00\x00\x00garbage garbage garbage garbage garbage")
	m = build(t, garbage, name, g.segSize)
	if len(m.Unknown) != 1 || m.Unknown[0].Reason != UnknownInvalid || m.Unknown[0].Start != validEnd {
		t.Fatalf("garbage: %+v", m.Unknown)
	}
	// A recycled page: valid magic, an older page address.
	recycled := bytes.Clone(noSwitch)
	binary.LittleEndian.PutUint16(recycled[8192:], 0xD110)
	binary.LittleEndian.PutUint64(recycled[8192+8:], 0x1000)
	m = build(t, recycled, name, g.segSize)
	if len(m.Unknown) != 1 || m.Unknown[0].Reason != UnknownEndOfWAL {
		t.Fatalf("recycled: %+v", m.Unknown)
	}
	// PostgreSQL 18's magic: the whole segment is unknown.
	g18 := newGen(0xD118)
	g18.add(heapRec(relA, 1))
	d18, n18 := g18.seg(0)
	m = build(t, d18, n18, g18.segSize)
	if len(m.Forks) != 0 || len(m.Unknown) != 1 || m.Unknown[0] != (Unknown{Start: m.Start, End: m.End, Reason: UnknownFormat}) {
		t.Fatalf("PG18: %+v %+v", m.Forks, m.Unknown)
	}
	// The wrong name: another segment's map must never result.
	_, other := g.seg(1)
	m = build(t, data, other, g.segSize)
	if len(m.Unknown) != 1 || m.Unknown[0].Reason != UnknownFormat {
		t.Fatalf("wrong name: %+v", m.Unknown)
	}
}

// TestOverwriteContrecord: a record whose continuation was never written
// (crash) is dropped when the next page says XLP_FIRST_IS_OVERWRITE_CONTRECORD.
func TestOverwriteContrecord(t *testing.T) {
	g := newGen(0xD110)
	g.add(heapRec(relA, 1))
	img := make([]byte, 8192)
	aborted := g.add(mkRecord(RmXLOG, 0xA0, []tBlock{{id: 0, rel: &relB, blk: 77, image: img}}, nil, 0, nil))
	// Rewrite the second page as crash recovery does: OVERWRITE flag, no
	// CONTRECORD, then an XLOG_OVERWRITE_CONTRECORD record.
	g.pos = 8192
	g.prev = g.lsn(longPageHeader) // the record before the aborted one
	g.pageExtra = 0x4 | 0x8
	clear(g.data[8192:])
	g.add(mkRecord(RmXLOG, xlogOverwriteContRecord, nil, append(binary.LittleEndian.AppendUint64(nil, uint64(aborted)), 0, 0, 0, 0, 0, 0, 0, 0), 0, nil))
	g.pageExtra = 0x4
	g.add(heapRec(relA, 2))
	data, name := g.seg(0)
	w, recs := collect(t, data, name, g.segSize)
	if len(w.Overwrite) != 1 || w.Overwrite[0] != aborted || len(recs) != 3 {
		t.Fatalf("overwrite: %+v, %d records (%s %s)", w.Overwrite, len(recs), w.Reason, w.Detail)
	}
	m := build(t, data, name, g.segSize)
	if m.Fork(relB) != nil || m.Fork(relA) == nil || len(m.Fork(relA).Blocks) != 2 {
		t.Fatalf("forks %+v", m.Forks)
	}
}

// TestMergeLimits: a later segment's limit forgets the earlier segments'
// blocks at or above it; its own later blocks stay.
func TestMergeLimits(t *testing.T) {
	g := newGen(0xD110)
	g.add(heapRec(relA, 5, 10, 20))
	g.add(switchRec())
	g.pos = g.segSize
	g.add(smgrTruncateRec(relA, 7, smgrTruncHeap))
	g.add(heapRec(relA, 8))
	g.add(switchRec())
	g.pos = 2 * g.segSize
	g.add(heapRec(relA, 30))
	g.add(switchRec())
	var maps []*Map
	for i := 0; i < 3; i++ {
		d, n := g.seg(i)
		maps = append(maps, build(t, d, n, g.segSize))
	}
	m, err := Merge(maps...)
	if err != nil {
		t.Fatal(err)
	}
	if f := m.Fork(relA); f == nil || f.Limit != 7 || !slices.Equal(f.Blocks, []uint32{5, 8, 30}) {
		t.Fatalf("merged %+v", f)
	}
	if len(m.Unknown) != 0 || m.Records != 7 || m.Start != maps[0].Start || m.End != maps[2].End {
		t.Fatalf("merged %+v", m)
	}
	// A segment walmap cannot read in the middle: a marker, not an error,
	// and the other segments' blocks are still there.
	g18 := newGen(0xD118)
	g18.pos = g18.segSize
	g18.add(heapRec(relA, 1))
	d18, n18 := g18.seg(1)
	u, err := Merge(maps[0], build(t, d18, n18, g18.segSize), maps[2])
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Unknown) != 1 || u.Unknown[0] != (Unknown{Start: maps[1].Start, End: maps[1].End, Reason: UnknownFormat}) || u.SystemID != maps[0].SystemID {
		t.Fatalf("merge over an unreadable segment: %+v", u.Unknown)
	}
	if f := u.Fork(relA); f == nil || !slices.Equal(f.Blocks, []uint32{5, 10, 20, 30}) {
		t.Fatalf("merge over an unreadable segment: %+v", f)
	}
	if u.Covers(maps[0].Start, maps[0].End) != nil || u.Covers(maps[0].Start, maps[1].Start+1) == nil {
		t.Fatal("Covers ignores the unreadable segment")
	}
	// So is a zero-filled file.
	z, err := Merge(maps[0], build(t, make([]byte, g.segSize), n18, g.segSize), maps[2])
	if err != nil || len(z.Unknown) != 1 || z.Unknown[0].Reason != UnknownEndOfWAL || z.Unknown[0].Start != maps[1].Start {
		t.Fatalf("merge over a zero segment: %v %+v", err, z)
	}
	// A roll-up of roll-ups is the same map.
	a, _ := Merge(maps[0], maps[1])
	m2, err := Merge(a, maps[2])
	if err != nil || !bytes.Equal(m2.Marshal(), m.Marshal()) {
		t.Fatalf("merge of merges differs: %v", err)
	}
}

func TestMarshalVerify(t *testing.T) {
	g := newGen(0xD110)
	for i := uint32(0); i < 300; i++ {
		g.add(heapRec(relA, i*i%1000, i+5000))
	}
	g.add(smgrTruncateRec(relB, 3, smgrTruncHeap))
	g.add(mkRecord(RmDbase, 0x10, nil, u32s(16501, 1663), 0, nil))
	data, name := g.seg(0)
	m, err := BuildWithHash(data, name, uint32(g.segSize))
	if err != nil {
		t.Fatal(err)
	}
	if m.SegmentSHA256 != sha256.Sum256(data) {
		t.Fatal("hash not stored")
	}
	b := m.Marshal()
	back, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, m) {
		t.Fatalf("round trip:\n%+v\n%+v", back, m)
	}
	if err := Verify(data, name, back); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d records, %d blocks: map of %d bytes", m.Records, len(m.Fork(relA).Blocks), len(b))
	// A dropped block, a wrong limit, other bytes: Verify says so.
	drop := *back
	drop.Forks = slices.Clone(back.Forks)
	drop.Forks[0].Blocks = drop.Forks[0].Blocks[1:]
	if err := Verify(data, name, &drop); err == nil || !strings.Contains(err.Error(), "fork") {
		t.Fatalf("dropped block: %v", err)
	}
	other := bytes.Clone(data)
	other[len(other)-1] = 1 // past the valid WAL: same map, other bytes
	if err := Verify(other, name, back); err == nil || !strings.Contains(err.Error(), "SHA-256") {
		t.Fatalf("other bytes: %v", err)
	}
	// Every single-byte corruption of the encoding is refused.
	for i := range b {
		c := bytes.Clone(b)
		c[i] ^= 0x20
		if _, err := Unmarshal(c); err == nil {
			t.Fatalf("byte %d flipped: accepted", i)
		}
	}
}

// FuzzUnmarshal: arbitrary bytes never panic, and what is accepted
// re-encodes to exactly the same bytes (one encoding per map).
func FuzzUnmarshal(f *testing.F) {
	g := newGen(0xD110)
	for i := uint32(0); i < 5; i++ {
		g.add(heapRec(relA, i*3, i*3+1))
	}
	g.add(smgrCreateRec(relB))
	g.add(mkRecord(RmDbase, 0x10, nil, u32s(16501, 1663), 0, nil))
	g.add(mkRecord(140, 0x11, nil, []byte{1}, 0, nil))
	d, n := g.seg(0)
	m, _ := BuildWithHash(d, n, uint32(g.segSize))
	f.Add(m.Marshal())
	f.Add((&Map{}).Marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		// Seal the body with a valid CRC so the fuzzer explores the decoder
		// rather than the checksum (TestMarshalVerify covers that).
		if len(b) >= 4 {
			b = binary.LittleEndian.AppendUint32(bytes.Clone(b[:len(b)-4]), crc32c(b[:len(b)-4]))
		}
		m, err := Unmarshal(b)
		if err != nil {
			return
		}
		if again := m.Marshal(); !bytes.Equal(again, b) {
			t.Fatalf("re-encodes differently:\n%x\n%x", b, again)
		}
	})
}

// FuzzWalk: a segment with arbitrary bytes after valid WAL never panics,
// and the map still holds the valid records' blocks.
func FuzzWalk(f *testing.F) {
	g := newGen(0xD110)
	for i := uint32(0); i < 5; i++ {
		g.add(heapRec(relA, i))
	}
	base, name := g.seg(0)
	validEnd := g.pos
	f.Add([]byte{0x30, 0, 0, 0, 1, 2, 3}, uint16(0))
	f.Add(mkRecord(10, 0, []tBlock{{id: 0, rel: &relB, blk: 1, data: []byte{1}}}, nil, 1, nil), uint16(100))
	f.Add([]byte{0xff, 0xff}, uint16(0xFFFF)) // anywhere: into headers and records
	f.Fuzz(func(t *testing.T, junk []byte, at uint16) {
		data := bytes.Clone(base)
		anywhere := at&0x8000 != 0
		off := maxAlign(validEnd) + int(at)
		if anywhere {
			off = int(at &^ 0x8000)
		}
		if off+len(junk) > len(data) {
			return
		}
		copy(data[off:], junk)
		m, err := Build(data, name, uint32(g.segSize))
		if err != nil {
			t.Fatal(err)
		}
		if f := m.Fork(relA); !anywhere && (f == nil || len(f.Blocks) < 5) {
			t.Fatalf("valid records lost: %+v", m.Forks)
		}
		back, err := Unmarshal(m.Marshal())
		if err != nil {
			t.Fatal(err)
		}
		if err := Verify(data, name, back); err != nil {
			t.Fatal(err)
		}
		// What is mapped is a subset of the intact segment's blocks unless
		// the junk landed inside a record that still checks out (it cannot:
		// the CRC covers every byte).
		if f := m.Fork(relA); f != nil && len(f.Blocks) > 5 {
			t.Fatalf("junk produced blocks: %v", f.Blocks)
		}
	})
}

func fragString(f *Fragment) string {
	if f == nil {
		return "none"
	}
	return fmt.Sprintf("{LSN %s tot %d rem %d len %d kept %d applied %v}", f.LSN, f.TotLen, f.RemLen, f.Len, len(f.Prefix), f.Applied)
}

func TestSortBlocks(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var tmp []uint32
	for _, n := range []int{0, 1, 511, 512, 5000, 100000} {
		for _, spread := range []uint32{1 << 8, 1 << 20, 0xFFFFFFFF} {
			a := make([]uint32, n)
			for i := range a {
				a[i] = r.Uint32N(spread)
			}
			want := slices.Clone(a)
			slices.Sort(want)
			tmp = sortBlocks(a, tmp)
			if !slices.Equal(a, want) {
				t.Fatalf("n %d spread %d: not sorted", n, spread)
			}
		}
	}
}

// padTo adds records until the next one starts exactly at offset off
// (a multiple of 8 on the same page as the current position or later).
func padTo(t *testing.T, g *walGen, off int) {
	t.Helper()
	for {
		g.pos = maxAlign(g.pos)
		if off-g.pos <= 600 {
			break
		}
		g.add(heapRec(relB, 1))
	}
	left := off - maxAlign(g.pos)
	if g.pos%g.page == 0 {
		left -= shortPageHeader
	}
	if left < recordHeaderSize+2 || g.pos%g.page+left > g.page {
		t.Fatalf("padTo: %d bytes left at page offset %d", left, g.pos%g.page)
	}
	g.add(mkRecord(10, 0, nil, make([]byte, left-recordHeaderSize-2), 1, nil))
}

// TestStraddlingFileRecord: a commit that unlinks files, split over two
// segments with its main data in the second: the first map cannot apply
// it, the merge does (limit 0), and a wrong CRC keeps it out.
func TestStraddlingFileRecord(t *testing.T) {
	g := newGen(0xD110)
	g.add(heapRec(relA, 3))
	padTo(t, g, g.segSize-16)
	commit := g.add(commitRec([]RelFork{relA}, 2))
	g.add(heapRec(relA, 8))
	g.add(switchRec())
	d0, n0 := g.seg(0)
	d1, n1 := g.seg(1)
	m0, m1 := build(t, d0, n0, g.segSize), build(t, d1, n1, g.segSize)
	if m0.Tail == nil || m0.Tail.LSN != commit || m0.Tail.Applied {
		t.Fatalf("tail %s", fragString(m0.Tail))
	}
	if f := m0.Fork(relA); f == nil || f.Limit != NoLimit {
		t.Fatalf("segment 0 alone: %+v", f)
	}
	m, err := Merge(m0, m1)
	if err != nil {
		t.Fatal(err)
	}
	if f := m.Fork(relA); f == nil || f.Limit != 0 || !slices.Equal(f.Blocks, []uint32{8}) || len(m.Unknown) != 0 {
		t.Fatalf("merged: %+v, markers %+v", f, m.Unknown)
	}
	if m.Records != m0.Records+m1.Records+1 {
		t.Fatalf("merged records %d, segments %d + %d + the stitched one", m.Records, m0.Records, m1.Records)
	}
	bad := bytes.Clone(d1)
	bad[longPageHeader+20] ^= 0xFF // inside the commit's main data
	m, err = Merge(m0, build(t, bad, n1, g.segSize))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Unknown) == 0 || m.Unknown[0].Reason != UnknownStitch || m.Unknown[0].Start != commit {
		t.Fatalf("broken continuation: %+v", m.Unknown)
	}
}

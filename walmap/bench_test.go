package walmap

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"testing"

	"github.com/pgkeep/pgkeep/pg"
)

// benchSegments returns the segments to measure: the real ones in
// $PGKEEP_WALMAP_SEGMENTS (e.g. kept by TestWalkerMatchesWaldump with
// PGKEEP_WALMAP_KEEP), or one synthetic TPC-B-like 16 MiB segment.
func benchSegments(b testing.TB) (names []string, segs [][]byte) {
	if dir := os.Getenv("PGKEEP_WALMAP_SEGMENTS"); dir != "" {
		ents, err := os.ReadDir(dir)
		if err != nil {
			b.Fatal(err)
		}
		for _, e := range ents {
			if f, err := pg.ParseWALFileName(e.Name()); err == nil && f.Kind == pg.KindSegment {
				names = append(names, e.Name())
			}
		}
		sort.Strings(names)
		for _, n := range names {
			d, err := os.ReadFile(filepath.Join(dir, n))
			if err != nil {
				b.Fatal(err)
			}
			segs = append(segs, d)
		}
		return names, segs
	}
	g := newGen(0xD110)
	g.segSize = pg.DefaultSegmentSize
	tpcb(g, rand.New(rand.NewPCG(7, 8)), g.segSize-64<<10)
	g.add(switchRec())
	d, n := g.seg(0)
	return []string{n}, [][]byte{d}
}

// tpcb appends TPC-B-like transactions to g until it reaches offset until.
func tpcb(g *walGen, r *rand.Rand, until int) {
	accounts := RelFork{Spc: 1663, DB: 5, Rel: 16400}
	accountsIdx := RelFork{Spc: 1663, DB: 5, Rel: 16410}
	tellers := RelFork{Spc: 1663, DB: 5, Rel: 16401}
	history := RelFork{Spc: 1663, DB: 5, Rel: 16403}
	img := make([]byte, 8192-3000)
	for g.pos < until {
		// One TPC-B transaction: update account (sometimes with a full-page
		// image), index lookup-free HOT updates of teller and branch, a
		// history insert, a commit.
		blk := r.Uint32N(50000)
		if r.IntN(10) == 0 {
			g.add(mkRecord(10, 0x40, []tBlock{{id: 0, rel: &accounts, blk: blk, image: img, bimg: 0x1 | 0x2, holeOff: 1000}}, make([]byte, 20), 1, nil))
		} else {
			g.add(mkRecord(10, 0x40, []tBlock{{id: 0, rel: &accounts, blk: blk, data: make([]byte, 110)}}, make([]byte, 20), 1, nil))
		}
		g.add(mkRecord(11, 0x00, []tBlock{{id: 0, rel: &accountsIdx, blk: blk / 20, data: make([]byte, 16)}}, make([]byte, 2), 1, nil))
		g.add(mkRecord(10, 0x40, []tBlock{{id: 0, rel: &tellers, blk: r.Uint32N(8), data: make([]byte, 40)}}, make([]byte, 20), 1, nil))
		g.add(mkRecord(10, 0x00, []tBlock{{id: 0, rel: &history, blk: uint32(g.pos >> 16), data: make([]byte, 60)}}, make([]byte, 3), 1, nil))
		g.add(mkRecord(RmXact, xactCommit, nil, make([]byte, 8), 1, nil))
	}
}

// BenchmarkBuild: walk + CRC-32C of every record + map, per 16 MiB segment.
func BenchmarkBuild(b *testing.B) {
	names, segs := benchSegments(b)
	b.SetBytes(pg.DefaultSegmentSize)
	b.ReportAllocs()
	var recs uint64
	cpu := cpuClock(b)
	for i := 0; b.Loop(); i++ {
		j := i % len(segs)
		m, err := Build(segs[j], names[j], pg.DefaultSegmentSize)
		if err != nil {
			b.Fatal(err)
		}
		recs += m.Records
	}
	b.ReportMetric(float64(recs)/float64(b.N), "records/op")
	cpu()
}

// cpuClock reports this process's CPU time per op when the returned func
// is called: on a shared machine wall time (ns/op) counts other
// processes' load too.
func cpuClock(b *testing.B) func() {
	now := func() int64 {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return ru.Utime.Nano() + ru.Stime.Nano()
	}
	start := now()
	return func() {
		b.ReportMetric(float64(now()-start)/float64(b.N)/1e6, "cpu-ms/op")
	}
}

// BenchmarkWalk: the walk and CRC checks alone, without the map.
func BenchmarkWalk(b *testing.B) {
	names, segs := benchSegments(b)
	b.SetBytes(pg.DefaultSegmentSize)
	cpu := cpuClock(b)
	for i := 0; b.Loop(); i++ {
		j := i % len(segs)
		if _, err := Walk(segs[j], names[j], pg.DefaultSegmentSize, nil); err != nil {
			b.Fatal(err)
		}
	}
	cpu()
}

// BenchmarkMarshal: encoding a segment's map.
func BenchmarkMarshal(b *testing.B) {
	names, segs := benchSegments(b)
	m, err := Build(segs[0], names[0], pg.DefaultSegmentSize)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		m.Marshal()
	}
}

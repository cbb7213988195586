package walmap

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"testing"

	"github.com/pgkeep/pgkeep/pg"
)

// pinnedMaps is the SHA-256 of the Marshal bytes of the maps of
// pinSegments, as the walker built them before its speed-ups (issue 18):
// a faster walk must build exactly the same maps.
const pinnedMaps = "614064b83376b222ecf09ed37d49bc27a2f711e6e269673cf98b9983be47d997"

// pinSegments returns segments that exercise the walk's paths: the
// benchmark's TPC-B segment, and cut and corrupted copies of it; 1 MiB
// segments with records within a page, spanning pages, spanning several
// pages and straddling segment boundaries (a head and tail longer than
// FragmentCap), the last one ending in zeros.
func pinSegments(t *testing.T) (names []string, segs [][]byte) {
	bn, bs := benchSegments(t)
	names, segs = append(names, bn...), append(segs, bs...)
	full := bs[0]
	names, segs = append(names, bn[0]), append(segs, full[:7_777_777])
	for _, off := range []int{9_000_000, 12_345_678, 8192 * 700} {
		c := append([]byte(nil), full...)
		c[off] ^= 0x10
		names, segs = append(names, bn[0]), append(segs, c)
	}
	g := newGen(0xD110)
	r := rand.New(rand.NewPCG(1, 2))
	big := RelFork{Spc: 1663, DB: 5, Rel: 16500}
	for g.pos < 3*g.segSize-200_000 {
		tpcb(g, r, g.pos+int(r.Uint32N(60_000)))
		main := make([]byte, r.IntN(40_000))
		for i := range main {
			main[i] = byte(i * 7)
		}
		g.add(mkRecord(10, 0x00, []tBlock{{id: 0, rel: &big, blk: r.Uint32N(1000), data: make([]byte, 1+r.IntN(30_000))}}, main, 1, nil))
	}
	for i := 0; i < 3; i++ {
		d, n := g.seg(i)
		names, segs = append(names, n), append(segs, d)
	}
	return names, segs
}

func TestMapsPinned(t *testing.T) {
	names, segs := pinSegments(t)
	h := sha256.New()
	var heads, tails int
	for i := range segs {
		size := uint32(pg.DefaultSegmentSize)
		if len(segs[i]) == 1<<20 {
			size = 1 << 20
		}
		m, err := Build(segs[i], names[i], size)
		if err != nil {
			t.Fatal(err)
		}
		if m.Head != nil && m.Head.Len > FragmentCap {
			heads++
		}
		if m.Tail != nil && m.Tail.Len > FragmentCap {
			tails++
		}
		t.Logf("%s: %d records, %d forks, unknown %v", names[i], m.Records, len(m.Forks), m.Unknown)
		b := m.Marshal()
		h.Write(binary.LittleEndian.AppendUint64(nil, uint64(len(b))))
		h.Write(b)
	}
	if heads == 0 || tails == 0 {
		t.Errorf("the segments have %d heads and %d tails longer than FragmentCap, want some of each", heads, tails)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != pinnedMaps {
		t.Errorf("maps' SHA-256 %s, pinned %s", got, pinnedMaps)
	}
}

package walmaptest

import (
	"testing"

	"github.com/pgkeep/pgkeep/walmap"
)

// The generated segments map cleanly: no unknown marker, every block
// referenced, and their merge covers the whole range.
func TestSegmentsMapCleanly(t *testing.T) {
	names, segs := Segments(7, 1, 1<<20, 3, 3)
	var maps []*walmap.Map
	for i, s := range segs {
		m, err := walmap.Build(s, names[i], 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Unknown) != 0 || len(m.Forks) != 3 || m.Records == 0 {
			t.Fatalf("%s: unknown %v, %d forks, %d records", names[i], m.Unknown, len(m.Forks), m.Records)
		}
		maps = append(maps, m)
	}
	all, err := walmap.Merge(maps...)
	if err != nil {
		t.Fatal(err)
	}
	if err := all.Covers(all.Start, all.End); err != nil {
		t.Fatal(err)
	}
	if err := maps[0].Covers(maps[0].Start, maps[0].End); err == nil {
		t.Fatal("a segment ending inside a record covers its own end alone")
	}
}

package walmap

import (
	"bytes"
	"slices"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/pgkeep/pgkeep/pg"
)

// checkRealMaps: every real segment's map survives encoding, verifies
// against its segment and not after a dropped block; their merge covers
// the whole range with no unknown marker and shows the workload's
// file-level events.
func checkRealMaps(t *testing.T, segs []*walkedSeg, maps []*Map) {
	t.Helper()
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	var raw, packed int
	for i, m := range maps {
		s := segs[i]
		b := m.Marshal()
		back, err := Unmarshal(b)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if !bytes.Equal(back.Marshal(), b) {
			t.Fatalf("%s: map does not survive encoding", s.name)
		}
		if err := Verify(s.data, s.name, back); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		raw += len(b)
		packed += len(enc.EncodeAll(b, nil))
		// Drop one block of the busiest fork: Verify must notice.
		best := -1
		for j := range back.Forks {
			if best < 0 || len(back.Forks[j].Blocks) > len(back.Forks[best].Blocks) {
				best = j
			}
		}
		if best >= 0 && len(back.Forks[best].Blocks) > 0 {
			f := &back.Forks[best]
			f.Blocks = slices.Delete(f.Blocks, len(f.Blocks)/2, len(f.Blocks)/2+1)
			if err := Verify(s.data, s.name, back); err == nil {
				t.Fatalf("%s: map with a dropped block verifies", s.name)
			}
		}
	}
	t.Logf("maps: %d bytes encoded (%d per segment), %d after zstd", raw, raw/len(maps), packed)

	m, err := Merge(maps...)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Unknown) != 0 || m.Tail != nil {
		t.Fatalf("merged map: unknown %+v, tail %v", m.Unknown, m.Tail != nil)
	}
	if err := m.Covers(m.Start, m.End); err != nil {
		t.Fatal(err)
	}
	kinds := map[EventKind]int{}
	for _, e := range m.Events {
		kinds[e.Kind]++
	}
	for _, k := range []EventKind{EventDBCreateFileCopy, EventDBCreateWALLog, EventDBDrop, EventTablespaceCreate, EventTablespaceDrop} {
		if kinds[k] == 0 {
			t.Errorf("merged map has no %s event (%v)", k, kinds)
		}
	}
	var created, truncated, blocks int
	for _, f := range m.Forks {
		blocks += len(f.Blocks)
		switch {
		case f.Limit == 0:
			created++
		case f.Limit != NoLimit:
			truncated++
		}
	}
	// A truncation of a fork created in the range leaves limit 0 in the
	// roll-up; look for the truncation in the segments' own maps too.
	for _, sm := range maps {
		for _, f := range sm.Forks {
			if f.Limit != 0 && f.Limit != NoLimit {
				truncated++
			}
		}
	}
	if created == 0 || truncated == 0 {
		t.Errorf("merged map: %d forks created or dropped, %d truncated", created, truncated)
	}
	// Every walked block is in the roll-up, or above its fork's limit.
	union := map[blockKey]bool{}
	for _, s := range segs {
		for k := range s.blocks {
			union[k] = true
		}
	}
	for _, f := range m.Forks {
		for _, b := range f.Blocks {
			if !union[blockKey{f.RelFork, b}] {
				t.Fatalf("roll-up block %s %d was never walked", f.RelFork, b)
			}
		}
	}
	for k := range union {
		f := m.Fork(k.RelFork)
		if f == nil || k.Block < f.Limit && !slices.Contains(f.Blocks, k.Block) {
			t.Fatalf("walked block %s %d missing from the roll-up", k.RelFork, k.Block)
		}
	}
	t.Logf("roll-up of %d segments: %d forks (%d created/dropped, %d truncated), %d blocks, %d events, %d bytes",
		len(maps), len(m.Forks), created, truncated, blocks, len(m.Events), len(m.Marshal()))
}

// checkCut: a copy cut mid-record, and a full-size copy zeroed from
// there (what a .partial holds), map exactly the records before the cut.
func checkCut(t *testing.T, segs []*walkedSeg) {
	t.Helper()
	var s *walkedSeg
	for _, c := range segs {
		if c.w.Reason == EndComplete && (s == nil || c.records > s.records) {
			s = c
		}
	}
	if s == nil {
		t.Fatal("no complete segment to cut")
	}
	type span struct{ lsn, end pg.LSN }
	var recs []span
	if _, err := Walk(s.data, s.name, uint32(len(s.data)), func(r *Record) error {
		if r.Verified {
			recs = append(recs, span{r.LSN, r.End})
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, frac := range []int{3, 2} {
		cutOff := len(s.data)/frac + 1234
		cut := s.w.Start + pg.LSN(cutOff)
		i := 0
		for i < len(recs) && recs[i].end <= cut {
			i++
		}
		if i < len(recs) && recs[i].lsn >= cut {
			// Between two records (alignment, a page header): cut into
			// the middle of the next one.
			cut = recs[i].lsn + (recs[i].end-recs[i].lsn)/2
			cutOff = int(cut - s.w.Start)
		}
		if i == len(recs) || recs[i].lsn >= cut || cut >= recs[i].end {
			t.Fatalf("cut at %s is not inside a record", cut)
		}
		// Zero-filling must change the record: when its bytes from the
		// cut on are zeros already, the zero-filled copy still holds it
		// whole (and its CRC matches). Cut before its last non-zero byte.
		last := int(recs[i].end-s.w.Start) - 1
		for last > 0 && s.data[last] == 0 {
			last--
		}
		if cutOff > last {
			cutOff = last
			cut = s.w.Start + pg.LSN(cutOff)
		}
		if cut <= recs[i].lsn {
			t.Fatalf("record at %s has no non-zero byte to cut before", recs[i].lsn)
		}
		for _, v := range []struct {
			name string
			data []byte
		}{
			{"truncated", s.data[:cutOff]},
			{"zero-filled", append(bytes.Clone(s.data[:cutOff]), make([]byte, len(s.data)-cutOff)...)},
		} {
			m, err := Build(v.data, s.name, uint32(len(s.data)))
			if err != nil {
				t.Fatal(err)
			}
			if m.Records != uint64(i) || len(m.Unknown) != 1 || m.Unknown[0].Start != recs[i].lsn || m.Unknown[0].End != m.End || m.Tail != nil {
				t.Fatalf("%s at %s: %d records (want %d), markers %+v (record cut starts at %s)", v.name, cut, m.Records, i, m.Unknown, recs[i].lsn)
			}
			if err := m.Covers(m.Start, recs[i].lsn); err != nil {
				t.Fatalf("%s: %v", v.name, err)
			}
			if m.Covers(m.Start, recs[i].lsn+1) == nil {
				t.Fatalf("%s: the cut record counts as mapped", v.name)
			}
			t.Logf("%s copy of %s cut at %s: %d records mapped, then %s from %s", v.name, s.name, cut, m.Records, m.Unknown[0].Reason, m.Unknown[0].Start)
		}
	}
}

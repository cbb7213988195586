package pg

import "testing"

func TestTimelineForSegment(t *testing.T) {
	h, err := ParseHistory([]byte("1\t0/5000000\tno recovery target specified\n\n2\t0/90000A0\tbefore 2026-11-22 18:00:00+00\n"))
	if err != nil || len(h) != 2 {
		t.Fatalf("%v %v", h, err)
	}
	cases := map[uint64]uint32{0: 1, 4: 1, 5: 2, 8: 2, 9: 3, 100: 3}
	for seg, want := range cases {
		if got := TimelineForSegment(3, h, seg, DefaultSegmentSize); got != want {
			t.Errorf("segment %d: timeline %d, want %d", seg, got, want)
		}
	}
	if got := TimelineForSegment(1, nil, 7, DefaultSegmentSize); got != 1 {
		t.Errorf("no history: %d", got)
	}
	if _, err := ParseHistory([]byte("x 0/1\n")); err == nil {
		t.Error("bad history accepted")
	}
}

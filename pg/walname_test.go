package pg

import "testing"

func TestParseWALFileName(t *testing.T) {
	good := map[string]WALFileKind{
		"000000010000000000000001":                 KindSegment,
		"0000000A00000001000000FF":                 KindSegment,
		"000000010000000000000005.partial":         KindPartial,
		"000000010000000000000002.00000028.backup": KindBackup,
		"00000002.history":                         KindHistory,
	}
	for name, kind := range good {
		f, err := ParseWALFileName(name)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if f.Kind != kind || f.Name != name {
			t.Errorf("%s: got kind %v name %s", name, f.Kind, f.Name)
		}
	}
	bad := []string{"", "RECOVERYXLOG", "00000001000000000000000", "0000000100000000000000001",
		"000000010000000000000001.ready", "00000000.history", "000000000000000000000001",
		"00000001000000000000000g", "../00000002.history", "000000010000000000000002.0000002.backup"}
	for _, name := range bad {
		if _, err := ParseWALFileName(name); err == nil {
			t.Errorf("%q accepted", name)
		}
	}
}

func TestNextSegment(t *testing.T) {
	f, _ := ParseWALFileName("0000000100000000000000FE")
	n := f.NextSegment(DefaultSegmentSize)
	if n.Name != "0000000100000000000000FF" {
		t.Fatalf("next = %s", n.Name)
	}
	n = n.NextSegment(DefaultSegmentSize)
	if n.Name != "000000010000000100000000" {
		t.Fatalf("wrap = %s", n.Name)
	}
	// 1 GiB segments: only 4 per log.
	f, _ = ParseWALFileName("000000020000000300000003")
	if n := f.NextSegment(1 << 30); n.Name != "000000020000000400000000" {
		t.Fatalf("1GiB wrap = %s", n.Name)
	}
	if got := f.SegNo(1 << 30); got != 15 {
		t.Fatalf("segno = %d", got)
	}
}

func TestValidSegmentSize(t *testing.T) {
	for _, n := range []int64{1 << 20, 16 << 20, 1 << 30} {
		if !ValidSegmentSize(n) {
			t.Errorf("%d rejected", n)
		}
	}
	for _, n := range []int64{0, 1 << 19, 3 << 20, 2 << 30} {
		if ValidSegmentSize(n) {
			t.Errorf("%d accepted", n)
		}
	}
}

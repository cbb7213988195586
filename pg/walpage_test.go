package pg

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// realFirstPage is the first 40 bytes of 000000010000000000000001 as
// initdb of PostgreSQL 15 wrote it (system identifier 7714298854777892457).
const realFirstPage = "10d102000100000000000001000000000000000000000000692e3db2efb10e6b0000000100200000"

func realHeader(t testing.TB) []byte {
	b, err := hex.DecodeString(realFirstPage)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseWALPageHeaderReal(t *testing.T) {
	h, err := ParseWALPageHeader(realHeader(t))
	if err != nil {
		t.Fatal(err)
	}
	want := WALPageHeader{Magic: WALPageMagic15, Info: XLPLongHeader, Timeline: 1, PageAddr: 16 << 20,
		SystemIdentifier: 7714298854777892457, SegmentSize: 16 << 20, BlockSize: 8192}
	if h != want {
		t.Fatalf("got %+v, want %+v", h, want)
	}
	id, err := SegmentSystemIdentifier(realHeader(t))
	if err != nil || id != 7714298854777892457 {
		t.Fatalf("SegmentSystemIdentifier = %d, %v", id, err)
	}
	f, _ := ParseWALFileName("000000010000000000000001")
	if err := h.CheckSegment(f, 16<<20); err != nil {
		t.Fatal(err)
	}
}

func TestParseWALPageHeaderRejects(t *testing.T) {
	mod := func(off int, v uint64, size int) []byte {
		b := realHeader(t)
		switch size {
		case 2:
			binary.LittleEndian.PutUint16(b[off:], uint16(v))
		case 4:
			binary.LittleEndian.PutUint32(b[off:], uint32(v))
		case 8:
			binary.LittleEndian.PutUint64(b[off:], v)
		}
		return b
	}
	cases := map[string][]byte{
		"short":            realHeader(t)[:39],
		"empty":            nil,
		"zeros":            make([]byte, 40),
		"magic":            mod(0, 0x1234, 2),
		"short header":     mod(2, 0, 2),
		"unknown flag":     mod(2, XLPLongHeader|0x10, 2),
		"timeline 0":       mod(4, 0, 4),
		"page mid-segment": mod(8, 16<<20+8192, 8),
		"sysid 0":          mod(24, 0, 8),
		"seg size 3MiB":    mod(32, 3<<20, 4),
		"seg size 2GiB":    mod(32, 2<<30, 4),
		"block size 1000":  mod(36, 1000, 4),
	}
	for name, b := range cases {
		if _, err := ParseWALPageHeader(b); !errors.Is(err, ErrNotWAL) {
			t.Errorf("%s: err = %v, want ErrNotWAL", name, err)
		}
	}
	// A gzip file, a pgkeep object: not WAL.
	for _, s := range []string{"\x1f\x8b\x08\x00" + strings.Repeat("\x00", 40), "PGKO\x01\x01" + strings.Repeat("\x00", 40)} {
		if _, err := ParseWALPageHeader([]byte(s)); err == nil {
			t.Errorf("%q accepted", s[:4])
		}
	}
}

func TestCheckSegment(t *testing.T) {
	h, err := ParseWALPageHeader(realHeader(t))
	if err != nil {
		t.Fatal(err)
	}
	for name, ok := range map[string]bool{
		"000000010000000000000001":         true,
		"000000010000000000000001.partial": true,
		// A new timeline's first segment starts with the parent's pages.
		"000000020000000000000001":                 true,
		"000000010000000000000002":                 false, // page address
		"000000010000000100000001":                 false,
		"000000010000000000000101":                 false, // no such segment with 16 MiB
		"000000010000000000000001.00000028.backup": false,
		"00000001.history":                         false,
	} {
		f, err := ParseWALFileName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.CheckSegment(f, 16<<20); (err == nil) != ok {
			t.Errorf("%s: err = %v, want ok=%v", name, err, ok)
		}
	}
	if err := h.CheckSegment(WALFile{Name: "000000010000000000000001", Kind: KindSegment, Timeline: 1, Seg: 1}, 8<<20); err == nil {
		t.Error("truncated segment accepted")
	}
	h.Timeline = 3
	if err := h.CheckSegment(WALFile{Name: "000000020000000000000001", Kind: KindSegment, Timeline: 2, Seg: 1}, 16<<20); err == nil {
		t.Error("page of a newer timeline accepted")
	}
}

func FuzzParseWALPageHeader(f *testing.F) {
	f.Add(realHeader(f))
	f.Add(make([]byte, 40))
	f.Add([]byte("PGKO"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseWALPageHeader(b)
		if err != nil {
			if !errors.Is(err, ErrNotWAL) {
				t.Fatalf("error %v is not ErrNotWAL", err)
			}
			return
		}
		// An accepted header describes a segment whose own name it passes.
		size := int64(h.SegmentSize)
		seg := h.PageAddr.Segment(h.Timeline, size)
		if err := h.CheckSegment(seg, size); err != nil {
			t.Fatalf("header %+v fails its own segment %s: %v", h, seg.Name, err)
		}
		if _, err := ParseWALFileName(seg.Name); err != nil {
			t.Fatalf("segment name %s: %v", seg.Name, err)
		}
		if h.Info&XLPLongHeader == 0 || h.SystemIdentifier == 0 {
			t.Fatalf("accepted %+v", h)
		}
	})
}

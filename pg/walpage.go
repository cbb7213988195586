package pg

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The first page of every WAL segment starts with a long page header
// (PostgreSQL 15, src/include/access/xlog_internal.h), little endian on the
// hosts pgkeep supports:
//
//	 0 2 xlp_magic        XLOG_PAGE_MAGIC, changes with the WAL format (0xD110 in 15)
//	 2 2 xlp_info         flag bits; XLP_LONG_HEADER on a segment's first page
//	 4 4 xlp_tli          timeline of the first record on the page
//	 8 8 xlp_pageaddr     WAL address of the page (the segment's start)
//	16 4 xlp_rem_len      bytes of a record continued from the previous page
//	20 4 (padding: XLogPageHeaderData is MAXALIGNed to 24)
//	24 8 xlp_sysid        database system identifier, as in pg_control
//	32 4 xlp_seg_size     wal_segment_size
//	36 4 xlp_xlog_blcksz  WAL block size
const WALLongPageHeaderSize = 40

// xlp_info bits.
const (
	XLPFirstIsContRecord          = 0x0001
	XLPLongHeader                 = 0x0002
	XLPBkpRemovable               = 0x0004
	XLPFirstIsOverwriteContRecord = 0x0008
	xlpAllFlags                   = 0x000F
)

// WALPageMagic15 is XLOG_PAGE_MAGIC of PostgreSQL 15.
const WALPageMagic15 = 0xD110

// ErrNotWAL means bytes do not start with a WAL segment's long page header.
var ErrNotWAL = errors.New("not a WAL segment (no valid long page header)")

// WALPageHeader is a segment's first page header.
type WALPageHeader struct {
	Magic            uint16
	Info             uint16
	Timeline         uint32
	PageAddr         LSN
	RemLen           uint32
	SystemIdentifier uint64
	SegmentSize      uint32
	BlockSize        uint32
}

// ParseWALPageHeader parses the long page header at the start of a WAL
// segment (at least WALLongPageHeaderSize bytes of it). It checks what
// holds for every segment whatever PostgreSQL version wrote it: the long
// header flag and no unknown flag, a WAL page magic (0xD0xx or 0xD1xx), a
// nonzero timeline and system identifier, a valid segment size and block
// size, and a page address at the start of a segment. It does not check
// the header against a file name or a cluster; see CheckSegment.
func ParseWALPageHeader(b []byte) (WALPageHeader, error) {
	if len(b) < WALLongPageHeaderSize {
		return WALPageHeader{}, fmt.Errorf("%w: %d bytes, a long page header has %d", ErrNotWAL, len(b), WALLongPageHeaderSize)
	}
	le := binary.LittleEndian
	h := WALPageHeader{
		Magic:            le.Uint16(b[0:]),
		Info:             le.Uint16(b[2:]),
		Timeline:         le.Uint32(b[4:]),
		PageAddr:         LSN(le.Uint64(b[8:])),
		RemLen:           le.Uint32(b[16:]),
		SystemIdentifier: le.Uint64(b[24:]),
		SegmentSize:      le.Uint32(b[32:]),
		BlockSize:        le.Uint32(b[36:]),
	}
	switch {
	case h.Magic>>8 != 0xD0 && h.Magic>>8 != 0xD1:
		return h, fmt.Errorf("%w: page magic %#04x", ErrNotWAL, h.Magic)
	case h.Info&XLPLongHeader == 0:
		return h, fmt.Errorf("%w: first page lacks XLP_LONG_HEADER (info %#04x)", ErrNotWAL, h.Info)
	case h.Info&^xlpAllFlags != 0:
		return h, fmt.Errorf("%w: unknown page flags %#04x", ErrNotWAL, h.Info)
	case h.Timeline == 0:
		return h, fmt.Errorf("%w: timeline 0", ErrNotWAL)
	case h.SystemIdentifier == 0:
		return h, fmt.Errorf("%w: system identifier 0", ErrNotWAL)
	case !ValidSegmentSize(int64(h.SegmentSize)):
		return h, fmt.Errorf("%w: segment size %d", ErrNotWAL, h.SegmentSize)
	case h.BlockSize < 1024 || h.BlockSize > 65536 || h.BlockSize&(h.BlockSize-1) != 0:
		return h, fmt.Errorf("%w: WAL block size %d", ErrNotWAL, h.BlockSize)
	case uint64(h.PageAddr)%uint64(h.SegmentSize) != 0:
		return h, fmt.Errorf("%w: page address %s is not a segment start", ErrNotWAL, h.PageAddr)
	}
	return h, nil
}

// SegmentSystemIdentifier returns the system identifier of the cluster
// that wrote a WAL segment, from its first bytes.
func SegmentSystemIdentifier(b []byte) (uint64, error) {
	h, err := ParseWALPageHeader(b)
	if err != nil {
		return 0, err
	}
	return h.SystemIdentifier, nil
}

// CheckSegment checks that the header belongs to the segment or .partial
// file f of size bytes: its segment size is the file's size, its page
// address is where f's name says the segment starts, and its timeline is
// f's or an older one (a new timeline's first segment begins with the
// parent timeline's pages, copied at the switch).
func (h WALPageHeader) CheckSegment(f WALFile, size int64) error {
	if f.Kind != KindSegment && f.Kind != KindPartial {
		return fmt.Errorf("%s is a %s file, not a segment", f.Name, f.Kind)
	}
	if f.Seg >= SegmentsPerLog(int64(h.SegmentSize)) {
		return fmt.Errorf("%s: no such segment with %d-byte segments", f.Name, h.SegmentSize)
	}
	if int64(h.SegmentSize) != size {
		return fmt.Errorf("%s: page header says segment size %d, the file has %d bytes", f.Name, h.SegmentSize, size)
	}
	if want := LSN(f.SegNo(int64(h.SegmentSize)) * uint64(h.SegmentSize)); h.PageAddr != want {
		return fmt.Errorf("%s: first page is at %s, the name says %s", f.Name, h.PageAddr, want)
	}
	if h.Timeline > f.Timeline {
		return fmt.Errorf("%s: first page is of timeline %d, newer than the name's %d", f.Name, h.Timeline, f.Timeline)
	}
	return nil
}

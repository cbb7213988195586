package pg

import (
	"fmt"
	"strconv"
	"strings"
)

// LSN is a WAL location.
type LSN uint64

// ParseLSN parses PostgreSQL's "X/Y" notation.
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return 0, fmt.Errorf("%q is not an LSN (like 0/3000028)", s)
	}
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if err1 != nil || err2 != nil || hi == "" || lo == "" {
		return 0, fmt.Errorf("%q is not an LSN (like 0/3000028)", s)
	}
	return LSN(h<<32 | l), nil
}

func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l)) }

// Segment is the WAL segment (on timeline tli) holding l.
func (l LSN) Segment(tli uint32, segmentSize int64) WALFile {
	segno := uint64(l) / uint64(segmentSize)
	per := uint64(SegmentsPerLog(segmentSize))
	log, seg := uint32(segno/per), uint32(segno%per)
	return WALFile{Name: SegmentName(tli, log, seg), Kind: KindSegment, Timeline: tli, Log: log, Seg: seg}
}

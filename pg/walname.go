// Package pg holds PostgreSQL knowledge that pgkeep needs everywhere: WAL
// file names, segment arithmetic, the control file. It does no I/O policy of
// its own.
package pg

import (
	"fmt"
	"strconv"
	"strings"
)

// WALFileKind tells which of the files PostgreSQL archives a name is.
type WALFileKind int

const (
	KindSegment WALFileKind = iota + 1 // 000000010000000000000001
	KindPartial                        // 000000010000000000000001.partial
	KindBackup                         // 000000010000000000000001.00000028.backup
	KindHistory                        // 00000002.history
)

func (k WALFileKind) String() string {
	switch k {
	case KindSegment:
		return "segment"
	case KindPartial:
		return "partial"
	case KindBackup:
		return "backup"
	case KindHistory:
		return "history"
	}
	return "unknown"
}

// WALFile is a parsed archive file name.
type WALFile struct {
	Name     string
	Kind     WALFileKind
	Timeline uint32
	// Log and Seg are the two halves of a segment number; zero for history files.
	Log, Seg uint32
}

// DefaultSegmentSize is PostgreSQL's default wal_segment_size.
const DefaultSegmentSize = 16 << 20

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// ParseWALFileName accepts exactly the names PostgreSQL hands to
// archive_command and restore_command; anything else is an error, so a
// typo in a hook never becomes an object in the repository.
func ParseWALFileName(name string) (WALFile, error) {
	bad := fmt.Errorf("%q is not a WAL file name (segment, .partial, .backup or .history)", name)
	switch {
	case len(name) == 24 && isHex(name):
		return parseSegment(name, KindSegment)
	case len(name) == 32 && strings.HasSuffix(name, ".partial") && isHex(name[:24]):
		return parseSegment(name, KindPartial)
	case len(name) == 40 && strings.HasSuffix(name, ".backup") && isHex(name[:24]) &&
		name[24] == '.' && isHex(name[25:33]):
		return parseSegment(name, KindBackup)
	case len(name) == 16 && strings.HasSuffix(name, ".history") && isHex(name[:8]):
		tli, _ := strconv.ParseUint(name[:8], 16, 32)
		if tli == 0 {
			return WALFile{}, bad
		}
		return WALFile{Name: name, Kind: KindHistory, Timeline: uint32(tli)}, nil
	}
	return WALFile{}, bad
}

func parseSegment(name string, kind WALFileKind) (WALFile, error) {
	tli, _ := strconv.ParseUint(name[0:8], 16, 32)
	log, _ := strconv.ParseUint(name[8:16], 16, 32)
	seg, _ := strconv.ParseUint(name[16:24], 16, 32)
	if tli == 0 {
		return WALFile{}, fmt.Errorf("%q: timeline 0 does not exist", name)
	}
	return WALFile{Name: name, Kind: kind, Timeline: uint32(tli), Log: uint32(log), Seg: uint32(seg)}, nil
}

// SegmentName formats a segment file name.
func SegmentName(tli, log, seg uint32) string {
	return fmt.Sprintf("%08X%08X%08X", tli, log, seg)
}

// SegmentsPerLog is how many segments of the given size make up one "log"
// (4 GiB of WAL): the low half of a segment name wraps at this number.
func SegmentsPerLog(segmentSize int64) uint32 {
	return uint32((int64(1) << 32) / segmentSize)
}

// ValidSegmentSize reports whether n is a wal_segment_size PostgreSQL
// accepts (a power of two between 1 MiB and 1 GiB).
func ValidSegmentSize(n int64) bool {
	return n >= 1<<20 && n <= 1<<30 && n&(n-1) == 0
}

// NextSegment returns the segment that follows f on the same timeline.
func (f WALFile) NextSegment(segmentSize int64) WALFile {
	log, seg := f.Log, f.Seg+1
	if seg >= SegmentsPerLog(segmentSize) {
		log, seg = log+1, 0
	}
	return WALFile{Name: SegmentName(f.Timeline, log, seg), Kind: KindSegment, Timeline: f.Timeline, Log: log, Seg: seg}
}

// SegNo is the absolute segment number (independent of timeline).
func (f WALFile) SegNo(segmentSize int64) uint64 {
	return uint64(f.Log)*uint64(SegmentsPerLog(segmentSize)) + uint64(f.Seg)
}

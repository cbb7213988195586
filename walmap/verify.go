package walmap

import (
	"bytes"
	"crypto/sha256"
	"fmt"
)

// Verify rebuilds the map of segment data (named name) and checks that m
// is exactly that map: same range, records, forks, blocks, limits, events,
// unknown markers and boundary fragments, and, when m carries a segment
// SHA-256, the same bytes. A nil error means m may be used for data.
func Verify(data []byte, name string, m *Map) error {
	if m == nil {
		return fmt.Errorf("%s: no map", name)
	}
	if m.ParserVersion != ParserVersion {
		return fmt.Errorf("%s: map written by walker version %d, this one is %d: rebuild it", name, m.ParserVersion, ParserVersion)
	}
	got, err := Build(data, name, m.SegmentSize)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if m.SegmentSHA256 != ([32]byte{}) {
		if sum := sha256.Sum256(data); sum != m.SegmentSHA256 {
			return fmt.Errorf("%s: map is of a segment with SHA-256 %x, these bytes have %x", name, m.SegmentSHA256, sum)
		}
		got.SegmentSHA256 = m.SegmentSHA256
	}
	if bytes.Equal(got.Marshal(), m.Marshal()) {
		return nil
	}
	return fmt.Errorf("%s: map differs from the segment's: %s", name, diff(m, got))
}

// diff names the first difference between a stored map and the rebuilt one.
func diff(stored, built *Map) string {
	switch {
	case stored.Start != built.Start || stored.End != built.End:
		return fmt.Sprintf("range %s..%s, segment's %s..%s", stored.Start, stored.End, built.Start, built.End)
	case stored.SystemID != built.SystemID || stored.WALMagic != built.WALMagic || stored.Timeline != built.Timeline:
		return fmt.Sprintf("system %d magic %#x timeline %d, segment's %d %#x %d", stored.SystemID, stored.WALMagic, stored.Timeline,
			built.SystemID, built.WALMagic, built.Timeline)
	case stored.Records != built.Records || stored.FirstRecord != built.FirstRecord || stored.LastRecord != built.LastRecord:
		return fmt.Sprintf("%d records %s..%s, segment has %d %s..%s", stored.Records, stored.FirstRecord, stored.LastRecord,
			built.Records, built.FirstRecord, built.LastRecord)
	case len(stored.Unknown) != len(built.Unknown):
		return fmt.Sprintf("%d unknown markers, segment gives %d", len(stored.Unknown), len(built.Unknown))
	case len(stored.Events) != len(built.Events):
		return fmt.Sprintf("%d events, segment gives %d", len(stored.Events), len(built.Events))
	case len(stored.Forks) != len(built.Forks):
		return fmt.Sprintf("%d forks, segment gives %d", len(stored.Forks), len(built.Forks))
	}
	for i := range stored.Forks {
		s, b := &stored.Forks[i], &built.Forks[i]
		if s.RelFork != b.RelFork || s.Limit != b.Limit || len(s.Blocks) != len(b.Blocks) {
			return fmt.Sprintf("fork %s limit %d with %d blocks, segment gives %s limit %d with %d", s.RelFork, s.Limit, len(s.Blocks),
				b.RelFork, b.Limit, len(b.Blocks))
		}
		for j := range s.Blocks {
			if s.Blocks[j] != b.Blocks[j] {
				return fmt.Sprintf("fork %s block %d, segment gives %d", s.RelFork, s.Blocks[j], b.Blocks[j])
			}
		}
	}
	return "events, markers, flags or boundary fragments"
}

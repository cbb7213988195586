package walmap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"

	"github.com/pgkeep/pgkeep/pg"
)

// crcAcc computes a CRC-32C over a stream given partly as bytes, partly as
// the CRCs of pieces that are no longer at hand.
type crcAcc struct {
	crc uint32
	n   int64
}

func (c *crcAcc) raw(b []byte) {
	c.crc = crc32.Update(c.crc, castagnoli, b)
	c.n += int64(len(b))
}

func (c *crcAcc) piece(crc uint32, n int64) {
	c.crc = crc32cCombine(c.crc, crc, n)
	c.n += n
}

// extend appends head h (the continuation in the next segment) to tail t,
// keeping at most FragmentCap raw bytes.
func extend(t *Fragment, h *Fragment) *Fragment {
	out := &Fragment{LSN: t.LSN, TotLen: t.TotLen, Len: t.Len + h.Len, Prefix: bytes.Clone(t.Prefix), RestCRC: t.RestCRC, Applied: t.Applied}
	rest := crcAcc{crc: t.RestCRC, n: int64(t.Len) - int64(len(t.Prefix))}
	raw := h.Prefix
	if rest.n == 0 {
		k := min(FragmentCap-len(out.Prefix), len(raw))
		out.Prefix = append(out.Prefix, raw[:k]...)
		raw = raw[k:]
	}
	rest.raw(raw)
	rest.piece(h.RestCRC, int64(h.Len)-int64(len(h.Prefix)))
	out.RestCRC = rest.crc
	return out
}

// stitch completes tail t with its last continuation h: it checks the
// record's CRC and returns the record decoded as far as the bytes at hand
// allow (Main nil when the main data was not kept).
func stitch(l *layout, t *Fragment, h *Fragment) (*Record, error) {
	if l == nil {
		return nil, fmt.Errorf("record at %s: WAL page magic unknown", t.LSN)
	}
	if t.TotLen < recordHeaderSize || uint64(t.Len)+uint64(h.Len) != uint64(t.TotLen) {
		return nil, fmt.Errorf("record at %s of %d bytes: %d bytes before %s and %d after", t.LSN, t.TotLen, t.Len, h.LSN, h.Len)
	}
	tRest := int64(t.Len) - int64(len(t.Prefix))
	hRest := int64(h.Len) - int64(len(h.Prefix))
	// The header: the first 24 bytes, all raw (a tail keeps FragmentCap
	// raw bytes before any CRC-only rest).
	hdr := slices.Concat(t.Prefix, h.Prefix)
	if tRest > 0 {
		hdr = t.Prefix
	}
	if len(hdr) < recordHeaderSize {
		return nil, fmt.Errorf("record at %s: header not at hand", t.LSN)
	}
	var c crcAcc
	// Record bytes [24, tot), then [0, 20).
	skip := recordHeaderSize
	if len(t.Prefix) >= skip {
		c.raw(t.Prefix[skip:])
		c.piece(t.RestCRC, tRest)
		c.raw(h.Prefix)
	} else {
		c.raw(h.Prefix[skip-len(t.Prefix):])
	}
	c.piece(h.RestCRC, hRest)
	c.raw(hdr[:20])
	if want := binary.LittleEndian.Uint32(hdr[20:]); c.crc != want {
		return nil, fmt.Errorf("record at %s: CRC-32C %08x, header says %08x", t.LSN, c.crc, want)
	}
	r := &Record{l: l}
	var rec []byte
	if tRest == 0 && hRest == 0 {
		rec = hdr // the whole record
	} else {
		rec = hdr[:min(len(hdr), FragmentCap)]
	}
	if err := decodeRecord(l, rec, t.TotLen, r); err != nil {
		if errors.Is(err, errShort) {
			return nil, fmt.Errorf("record at %s: block headers not at hand", t.LSN)
		}
		return nil, fmt.Errorf("record at %s: %w", t.LSN, err)
	}
	if r.Main == nil && r.MainLen > 0 && hRest == 0 && r.MainLen <= h.Len {
		r.Main = h.Prefix[len(h.Prefix)-int(r.MainLen):]
	}
	r.LSN, r.End, r.Verified = t.LSN, h.LSN+pg.LSN(h.Len), true
	return r, nil
}

// Merge unites the maps of consecutive WAL ranges (segments, or earlier
// merges) into one: a roll-up. It stitches the records straddling their
// boundaries (checking their CRCs), applies the maps in LSN order (a limit
// forgets the earlier blocks at or above it), and carries every unknown
// marker with its LSN range; a hole between two maps becomes an
// UnknownGap marker. Maps of different clusters, WAL versions or segment
// sizes, or overlapping maps, are an error.
func Merge(maps ...*Map) (*Map, error) {
	if len(maps) == 0 {
		return nil, errors.New("merge of no maps")
	}
	f := maps[0]
	for _, m := range maps {
		if !unreadable(m) {
			f = m // identity comes from the first map of a readable segment
			break
		}
	}
	l := layouts[f.WALMagic]
	out := &Map{
		ParserVersion: f.ParserVersion, WALMagic: f.WALMagic, SystemID: f.SystemID, SegmentSize: f.SegmentSize,
		WALBlockSize: f.WALBlockSize, Start: maps[0].Start,
		Flags: maps[0].Flags & FlagOverwriteAtStart, Head: maps[0].Head,
	}
	acc := make(map[RelFork]*forkAcc)
	apply := func(m *Map) {
		for i := range m.Forks {
			fk := &m.Forks[i]
			a := acc[fk.RelFork]
			if a == nil {
				a = &forkAcc{limit: NoLimit}
				acc[fk.RelFork] = a
			}
			if fk.Limit != NoLimit {
				a.limit = min(a.limit, fk.Limit)
				a.blocks = slices.DeleteFunc(a.blocks, func(b uint32) bool { return b >= fk.Limit })
			}
			a.blocks = append(a.blocks, fk.Blocks...)
		}
		out.Events = append(out.Events, m.Events...)
		out.Unknown = append(out.Unknown, m.Unknown...)
	}
	var pending *Fragment
	var last pg.LSN // start of the last record seen
	for i, m := range maps {
		if unreadable(m) {
			// A segment walmap could not read at all: its marker says so, and
			// nothing chains or stitches across it.
			if i > 0 && m.Start < maps[i-1].End {
				return nil, fmt.Errorf("map of %s..%s overlaps or precedes the one of %s..%s", m.Start, m.End, maps[i-1].Start, maps[i-1].End)
			}
			if i > 0 && m.Start > maps[i-1].End {
				out.Unknown = append(out.Unknown, Unknown{Start: maps[i-1].End, End: m.Start, Reason: UnknownGap})
			}
			if pending != nil {
				out.Unknown = append(out.Unknown, Unknown{Start: pending.LSN, End: m.Start, Reason: UnknownStitch})
			}
			out.Unknown = append(out.Unknown, m.Unknown...)
			pending, last = nil, 0
			out.End = m.End
			continue
		}
		if m.SystemID != f.SystemID || m.WALMagic != f.WALMagic || m.SegmentSize != f.SegmentSize || m.ParserVersion != f.ParserVersion {
			return nil, fmt.Errorf("map of %s..%s is of another cluster, WAL version, segment size or walker (system %d magic %#x size %d parser %d, first map's %d %#x %d %d)",
				m.Start, m.End, m.SystemID, m.WALMagic, m.SegmentSize, m.ParserVersion, f.SystemID, f.WALMagic, f.SegmentSize, f.ParserVersion)
		}
		if i > 0 {
			prev := maps[i-1]
			if m.Start < prev.End {
				return nil, fmt.Errorf("map of %s..%s overlaps or precedes the one of %s..%s", m.Start, m.End, prev.Start, prev.End)
			}
			if m.Start > prev.End {
				out.Unknown = append(out.Unknown, Unknown{Start: prev.End, End: m.Start, Reason: UnknownGap})
				pending, last = nil, 0
			}
		}
		chained := last != 0 // the xl_prev chain can be checked into this map
		switch {
		case pending != nil && m.Head != nil && m.Head.RemLen == pending.TotLen-pending.Len:
			if m.Head.Len < m.Head.RemLen {
				pending = extend(pending, m.Head) // the record spans this whole map too
				break
			}
			r, err := stitch(l, pending, m.Head)
			if err != nil {
				out.Unknown = append(out.Unknown, Unknown{Start: pending.LSN, End: m.Start + pg.LSN(m.Head.Len), Reason: UnknownStitch})
				chained = false
			} else if !pending.Applied {
				b := &builder{l: l, forks: acc}
				b.record(r)
				out.Records++
				out.Events = append(out.Events, b.events...)
				out.Unknown = append(out.Unknown, b.unknown...)
			}
			pending = nil
		case pending != nil && m.Head == nil && m.Flags&FlagOverwriteAtStart != 0:
			// Crash recovery abandoned the unfinished record: it never happened,
			// and the next record links back to the one before it.
			if len(pending.Prefix) >= 16 {
				last = pg.LSN(binary.LittleEndian.Uint64(pending.Prefix[8:]))
			} else {
				chained = false
			}
			pending = nil
		case pending != nil:
			out.Unknown = append(out.Unknown, Unknown{Start: pending.LSN, End: m.Start, Reason: UnknownStitch})
			pending, chained = nil, false
		case m.Head != nil:
			// Continues a record the previous map could not read; that map's
			// unknown marker covers it.
			chained = false
		}
		if chained && m.FirstRecord != 0 && m.FirstPrev != last {
			out.Unknown = append(out.Unknown, Unknown{Start: m.Start, End: m.End, Reason: UnknownStitch})
		}
		apply(m)
		if m.Tail != nil {
			pending = m.Tail
		}
		if m.LastRecord != 0 {
			last = m.LastRecord
		}
		if len(m.Unknown) > 0 && m.Unknown[len(m.Unknown)-1].End == m.End {
			last = 0 // valid WAL stopped: no chain to check into the next map
		}
		out.Records += m.Records
		if m.FirstRecord != 0 && out.FirstRecord == 0 {
			out.FirstRecord, out.FirstPrev = m.FirstRecord, m.FirstPrev
		}
		if m.LastRecord != 0 {
			out.LastRecord = m.LastRecord
		}
		out.End, out.Timeline = m.End, m.Timeline
	}
	out.Tail = pending
	b := &builder{forks: acc}
	out.Forks = b.forksSorted()
	slices.SortStableFunc(out.Unknown, func(a, b Unknown) int { return cmpLSN(a.Start, b.Start) })
	slices.SortStableFunc(out.Events, func(a, b Event) int { return cmpLSN(a.LSN, b.LSN) })
	return out, nil
}

func cmpLSN(a, b pg.LSN) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// unreadable tells a map of a segment walmap could read nothing of (an
// unknown version, another segment's bytes, zeros): one marker over all of it.
func unreadable(m *Map) bool {
	return len(m.Unknown) == 1 && m.Unknown[0].Start == m.Start && m.Unknown[0].End == m.End && m.Head == nil && m.Records == 0
}

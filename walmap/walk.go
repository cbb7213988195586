package walmap

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/pgkeep/pgkeep/pg"
)

// EndReason tells why the walk of a segment stopped.
type EndReason uint8

const (
	// EndComplete: valid records up to the segment's end (the last one may
	// continue in the next segment: see Walked.Tail).
	EndComplete EndReason = iota + 1
	// EndSwitch: an XLOG_SWITCH record; the rest of the segment is unused.
	EndSwitch
	// EndOfWAL: zeros or a recycled page (valid magic, another page
	// address) where a record or page should be: a clean end of valid
	// WAL, normal for a .partial segment or one still being written.
	EndOfWAL
	// EndTruncated: the bytes given stop before the segment's end.
	EndTruncated
	// EndInvalid: a CRC mismatch, a malformed record or page header: the
	// bytes from there on are not valid WAL.
	EndInvalid
	// EndUnknownFormat: the segment's first page is not a WAL page of a
	// version walmap knows, or does not belong to the named segment.
	EndUnknownFormat
)

func (e EndReason) String() string {
	switch e {
	case EndComplete:
		return "complete"
	case EndSwitch:
		return "switch"
	case EndOfWAL:
		return "end-of-wal"
	case EndTruncated:
		return "truncated"
	case EndInvalid:
		return "invalid"
	case EndUnknownFormat:
		return "unknown-format"
	}
	return fmt.Sprintf("end-reason-%d", uint8(e))
}

// FragmentCap bounds the raw bytes a Fragment keeps; the rest of its bytes
// are kept as a CRC only. Every record's block headers (at most 24 +
// 33*27 + 13 bytes) fit.
const FragmentCap = 8192

// Fragment is the part of a record that lies in one segment when the
// record straddles a segment boundary.
type Fragment struct {
	// LSN: for a tail, where the record starts; for a head, the segment start.
	LSN pg.LSN
	// TotLen is the record's xl_tot_len (tails only; it is always on the
	// record's first page).
	TotLen uint32
	// RemLen is xlp_rem_len on the segment's first page (heads only): the
	// bytes of the record still to come at LSN.
	RemLen uint32
	// Len is how many of the record's bytes (page headers excluded) lie
	// in this segment.
	Len uint32
	// Prefix holds the first min(Len, FragmentCap) of them; RestCRC is the
	// CRC-32C of the remaining Len-len(Prefix).
	Prefix  []byte
	RestCRC uint32
	// Applied (tails only): the record's block references and events were
	// decoded from this segment's bytes and are in its map already; they
	// are confirmed (CRC) only when the map is merged with the next one.
	Applied bool
}

// Walked describes what the walk of one segment found.
type Walked struct {
	Name        string
	Timeline    uint32
	SegmentSize uint32
	Start, End  pg.LSN // the segment's first byte and the byte after its last
	Magic       uint16
	Major       int // 0 for an unknown magic
	SystemID    uint64
	BlockSize   uint32
	// Head is the continuation of a record begun in an earlier segment.
	Head *Fragment
	// FirstRecord and LastRecord are the start LSNs of the first and the
	// last record that starts in the segment (0 if none); FirstPrev is the
	// first record's xl_prev.
	FirstRecord, LastRecord, FirstPrev pg.LSN
	Records                            int
	// ValidEnd is where valid WAL stops: End, or the start of what could
	// not be read (for EndSwitch, End).
	ValidEnd  pg.LSN
	Reason    EndReason
	Detail    string // why, for EndInvalid, EndOfWAL and EndUnknownFormat
	Tail      *Fragment
	Overwrite []pg.LSN // records aborted by XLP_FIRST_IS_OVERWRITE_CONTRECORD
	// OverwriteAtStart: the first page has XLP_FIRST_IS_OVERWRITE_CONTRECORD
	// (the previous segment's unfinished record was abandoned).
	OverwriteAtStart bool
}

// ReadSegment reads a whole segment (or a shorter truncated one) from r.
func ReadSegment(r io.Reader, segmentSize uint32) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, int64(segmentSize)+1))
	if err != nil {
		return nil, fmt.Errorf("read segment: %w", err)
	}
	if len(b) > int(segmentSize) {
		return nil, fmt.Errorf("segment is longer than %d bytes", segmentSize)
	}
	return b, nil
}

// walker holds one walk's state.
type walker struct {
	data     []byte
	l        *layout
	w        *Walked
	page     int // XLOG_BLCKSZ
	pageMask int // page-1: page offsets without a division
	lastTLI  uint32
	buf      []byte // reassembly of records that span pages
	rec      Record
	fn       func(*Record) error
}

// Walk walks one segment's records in LSN order and calls fn for each
// record that starts in it (the last one with Verified false if it
// continues in the next segment). name is the segment's file name
// (a .partial name is accepted), tli its timeline. A malformed or
// truncated segment is not an error: Walk stops where valid WAL stops and
// says why in the result. Errors are for bad arguments and from fn.
func Walk(data []byte, name string, segmentSize uint32, fn func(*Record) error) (*Walked, error) {
	f, err := pg.ParseWALFileName(name)
	if err != nil {
		return nil, err
	}
	if f.Kind != pg.KindSegment && f.Kind != pg.KindPartial {
		return nil, fmt.Errorf("%s is not a WAL segment", name)
	}
	if !pg.ValidSegmentSize(int64(segmentSize)) {
		return nil, fmt.Errorf("invalid WAL segment size %d", segmentSize)
	}
	if f.Seg >= pg.SegmentsPerLog(int64(segmentSize)) {
		return nil, fmt.Errorf("%s: no such segment with %d-byte segments", name, segmentSize)
	}
	start := pg.LSN(f.SegNo(int64(segmentSize)) * uint64(segmentSize))
	w := &Walked{Name: name, Timeline: f.Timeline, SegmentSize: segmentSize, Start: start, End: start + pg.LSN(segmentSize)}
	w.ValidEnd = start
	wk := &walker{data: data, w: w, fn: fn}
	wk.rec.l = nil
	if fn == nil {
		wk.fn = func(*Record) error { return nil }
	}
	return w, wk.run()
}

func (wk *walker) stop(at int, reason EndReason, format string, args ...any) {
	wk.w.ValidEnd = wk.w.Start + pg.LSN(at)
	wk.w.Reason = reason
	wk.w.Detail = fmt.Sprintf(format, args...)
}

// pageHeader checks the header of the page at offset off and returns its
// size, or ok false after recording why the walk stops there.
func (wk *walker) pageHeader(off int) (info uint16, rem uint32, size int, ok bool) {
	if off+shortPageHeader > len(wk.data) {
		wk.stop(off, EndTruncated, "segment ends at %d bytes", len(wk.data))
		return 0, 0, 0, false
	}
	b := wk.data[off:]
	le := binary.LittleEndian
	magic, info, tli := le.Uint16(b), le.Uint16(b[2:]), le.Uint32(b[4:])
	addr, rem := pg.LSN(le.Uint64(b[8:])), le.Uint32(b[16:])
	want := wk.w.Start + pg.LSN(off)
	switch {
	case magic == 0 && allZero(b[:min(len(b), wk.page)]):
		wk.stop(off, EndOfWAL, "zero page at %s", want)
		return 0, 0, 0, false
	case magic == wk.w.Magic && addr != want && info&^wk.l.pageFlagMask == 0:
		wk.stop(off, EndOfWAL, "page at %s holds recycled WAL of %s", want, addr)
		return 0, 0, 0, false
	case magic != wk.w.Magic:
		wk.stop(off, EndInvalid, "page at %s: magic %#04x, the segment's is %#04x", want, magic, wk.w.Magic)
		return 0, 0, 0, false
	case info&^wk.l.pageFlagMask != 0:
		wk.stop(off, EndInvalid, "page at %s: unknown flags %#04x", want, info)
		return 0, 0, 0, false
	case addr != want:
		wk.stop(off, EndInvalid, "page at %s says it is at %s", want, addr)
		return 0, 0, 0, false
	case tli < wk.lastTLI || tli > wk.w.Timeline:
		wk.stop(off, EndInvalid, "page at %s: timeline %d after %d (segment's %d)", want, tli, wk.lastTLI, wk.w.Timeline)
		return 0, 0, 0, false
	case off > 0 && info&wk.l.pageLongHeader != 0:
		wk.stop(off, EndInvalid, "page at %s: long header inside a segment", want)
		return 0, 0, 0, false
	}
	wk.lastTLI = tli
	size = shortPageHeader
	if off == 0 {
		size = longPageHeader
	}
	return info, rem, size, true
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func maxAlign(n int) int { return (n + 7) &^ 7 }

func (wk *walker) run() error {
	w := wk.w
	h, err := pg.ParseWALPageHeader(wk.data)
	if err != nil {
		if len(wk.data) < longPageHeader {
			wk.stop(0, EndTruncated, "segment ends at %d bytes", len(wk.data))
		} else if allZero(wk.data[:longPageHeader]) {
			wk.stop(0, EndOfWAL, "zero first page")
		} else {
			wk.stop(0, EndUnknownFormat, "%v", err)
		}
		return nil
	}
	w.Magic, w.SystemID, w.BlockSize = h.Magic, h.SystemIdentifier, h.BlockSize
	l, ok := layouts[h.Magic]
	if !ok {
		wk.stop(0, EndUnknownFormat, "WAL page magic %#04x is of a PostgreSQL version walmap does not know", h.Magic)
		return nil
	}
	w.Major, wk.l = l.major, l
	wk.rec.l = l
	if h.SegmentSize != w.SegmentSize || h.PageAddr != w.Start || h.Timeline > w.Timeline {
		wk.stop(0, EndUnknownFormat, "first page (segment size %d, address %s, timeline %d) is not of segment %s with %d-byte segments",
			h.SegmentSize, h.PageAddr, h.Timeline, w.Name, w.SegmentSize)
		return nil
	}
	if h.BlockSize < 1024 || int(h.SegmentSize)%int(h.BlockSize) != 0 {
		wk.stop(0, EndUnknownFormat, "WAL block size %d", h.BlockSize)
		return nil
	}
	// A divisor of the (power of two) segment size: a power of two too.
	wk.page, wk.pageMask = int(h.BlockSize), int(h.BlockSize)-1
	info, rem, hsz, ok := wk.pageHeader(0)
	if !ok {
		return nil
	}
	pos := hsz
	w.OverwriteAtStart = info&l.pageOverwrite != 0
	if info&l.pageContRecord != 0 {
		var ok bool
		if pos, ok = wk.head(rem, hsz); !ok {
			return nil
		}
	}
	return wk.records(pos)
}

// head consumes the continuation of a record begun in an earlier segment
// (rem bytes from offset pos on the first page) and returns where the
// first record starts.
func (wk *walker) head(rem uint32, pos int) (int, bool) {
	hd := &Fragment{LSN: wk.w.Start, RemLen: rem}
	wk.w.Head = hd
	var crc uint32
	left := rem
	for {
		pageEnd := (pos | wk.pageMask) + 1
		n := min(int(left), pageEnd-pos)
		if pos+n > len(wk.data) {
			wk.stop(pos, EndTruncated, "segment ends at %d bytes inside the continued record", len(wk.data))
			return 0, false
		}
		chunk := wk.data[pos : pos+n]
		if room := FragmentCap - len(hd.Prefix); room > 0 {
			k := min(room, n)
			hd.Prefix = append(hd.Prefix, chunk[:k]...)
			chunk = chunk[k:]
		}
		if len(chunk) > 0 {
			crc = crc32.Update(crc, castagnoli, chunk)
		}
		hd.Len += uint32(n)
		left -= uint32(n)
		pos += n
		if left == 0 {
			break
		}
		if pos >= int(wk.w.SegmentSize) {
			// The record goes on into the next segment too.
			hd.RestCRC = crc
			wk.w.ValidEnd, wk.w.Reason = wk.w.End, EndComplete
			return 0, false
		}
		info, prem, hsz, ok := wk.pageHeader(pos)
		if !ok {
			return 0, false
		}
		if info&wk.l.pageContRecord == 0 || prem != left {
			wk.stop(pos, EndInvalid, "page at %s: continued record wants %d more bytes, page says %d (flags %#x)", wk.w.Start+pg.LSN(pos), left, prem, info)
			return 0, false
		}
		pos += hsz
	}
	hd.RestCRC = crc
	return maxAlign(pos), true
}

// records walks records from pos on.
func (wk *walker) records(pos int) error {
	w, l := wk.w, wk.l
	le := binary.LittleEndian
	segSize := int(w.SegmentSize)
	var prev pg.LSN
	for {
		if pos >= segSize {
			w.ValidEnd, w.Reason = w.End, EndComplete
			return nil
		}
		if pos&wk.pageMask == 0 {
			info, _, hsz, ok := wk.pageHeader(pos)
			if !ok {
				return nil
			}
			if info&l.pageContRecord != 0 {
				wk.stop(pos, EndInvalid, "page at %s continues a record, but none is open", w.Start+pg.LSN(pos))
				return nil
			}
			pos += hsz
		}
		if pos+4 > len(wk.data) {
			wk.stop(pos, EndTruncated, "segment ends at %d bytes", len(wk.data))
			return nil
		}
		lsn := w.Start + pg.LSN(pos)
		tot := le.Uint32(wk.data[pos:])
		if tot == 0 {
			pageEnd := (pos | wk.pageMask) + 1
			if allZero(wk.data[pos:min(pageEnd, len(wk.data))]) {
				wk.stop(pos, EndOfWAL, "zeros at %s", lsn)
			} else {
				wk.stop(pos, EndInvalid, "record at %s: length 0", lsn)
			}
			return nil
		}
		if tot < recordHeaderSize {
			wk.stop(pos, EndInvalid, "record at %s: length %d", lsn, tot)
			return nil
		}
		rec, end, st := wk.assemble(pos, tot)
		switch st {
		case asmFail:
			return nil
		case asmOverwrite:
			// The record was never finished: crash recovery wrote new WAL over
			// its continuation, starting at the page at end.
			w.Overwrite = append(w.Overwrite, lsn)
			pos = end
			continue
		}
		// Header checks before anything is trusted (ValidXLogRecordHeader).
		if len(rec) >= recordHeaderSize {
			rmid, rprev := rec[17], pg.LSN(le.Uint64(rec[8:]))
			if !(rmid <= rmMaxBuiltin || l.customRmgrs && rmid >= rmMinCustom) {
				wk.stop(pos, EndInvalid, "record at %s: invalid resource manager id %d", lsn, rmid)
				return nil
			}
			if prev != 0 && rprev != prev {
				wk.stop(pos, EndInvalid, "record at %s: xl_prev %s, previous record at %s", lsn, rprev, prev)
				return nil
			}
		}
		if st == asmTail {
			w.ValidEnd, w.Reason = w.End, EndComplete
			return wk.tail(lsn, tot, rec)
		}
		if st == asmTruncated {
			wk.stop(pos, EndTruncated, "segment ends at %d bytes inside the record at %s", len(wk.data), lsn)
			return nil
		}
		if got, want := recordCRC(rec[:tot]), le.Uint32(rec[20:]); got != want {
			wk.stop(pos, EndInvalid, "record at %s: CRC-32C %08x, header says %08x", lsn, got, want)
			return nil
		}
		r := &wk.rec
		if err := decodeRecord(l, rec, tot, r); err != nil {
			wk.stop(pos, EndInvalid, "record at %s: %v", lsn, err)
			return nil
		}
		r.LSN, r.End, r.Verified = lsn, w.Start+pg.LSN(end), true
		if w.Records == 0 {
			w.FirstRecord, w.FirstPrev = lsn, r.Prev
		}
		w.LastRecord = lsn
		w.Records++
		prev = lsn
		if err := wk.fn(r); err != nil {
			return err
		}
		if r.RmID == RmXLOG && r.Info&^xlrInfoMask == xlogSwitch {
			w.ValidEnd, w.Reason = w.End, EndSwitch
			w.Detail = fmt.Sprintf("XLOG_SWITCH at %s", lsn)
			return nil
		}
		pos = maxAlign(end)
	}
}

type asmStatus uint8

const (
	asmOK asmStatus = iota
	asmTail
	asmTruncated
	asmOverwrite
	asmFail
)

// assemble returns the record of tot bytes starting at pos and the offset
// just past it. A record within one page is a slice of the segment;
// one that spans pages is copied into wk.buf. For asmTail and asmTruncated
// rec holds the bytes at hand; for asmOverwrite end is where to go on.
func (wk *walker) assemble(pos int, tot uint32) (rec []byte, end int, st asmStatus) {
	pageEnd := (pos | wk.pageMask) + 1
	if pos+int(tot) <= pageEnd {
		if pos+int(tot) > len(wk.data) {
			return wk.data[pos:], 0, asmTruncated
		}
		return wk.data[pos : pos+int(tot)], pos + int(tot), asmOK
	}
	buf := wk.buf[:0]
	n := min(pageEnd, len(wk.data)) - pos
	buf = append(buf, wk.data[pos:pos+n]...)
	p := pos + n
	defer func() { wk.buf = buf[:0] }()
	for uint32(len(buf)) < tot {
		if p >= int(wk.w.SegmentSize) {
			return buf, 0, asmTail
		}
		if p >= len(wk.data) {
			return buf, 0, asmTruncated
		}
		info, rem, hsz, ok := wk.pageHeader(p)
		if !ok {
			// Where the record is cut tells the whole story: move the stop
			// point back to the record's start.
			wk.w.ValidEnd = wk.w.Start + pg.LSN(pos)
			wk.w.Detail += fmt.Sprintf(" (inside the record at %s)", wk.w.Start+pg.LSN(pos))
			return nil, 0, asmFail
		}
		left := tot - uint32(len(buf))
		if info&wk.l.pageOverwrite != 0 && info&wk.l.pageContRecord == 0 {
			return nil, p + hsz, asmOverwrite
		}
		if info&wk.l.pageContRecord == 0 || rem != left {
			wk.stop(pos, EndInvalid, "record at %s: page at %s should continue it with %d bytes, says %d (flags %#x)",
				wk.w.Start+pg.LSN(pos), wk.w.Start+pg.LSN(p), left, rem, info)
			return nil, 0, asmFail
		}
		p += hsz
		k := min(int(left), wk.page-hsz, len(wk.data)-p)
		buf = append(buf, wk.data[p:p+k]...)
		p += k
	}
	return buf, p, asmOK
}

// tail records the unfinished last record of the segment and, when its
// headers (and main data where needed) are at hand, reports it to fn
// unverified.
func (wk *walker) tail(lsn pg.LSN, tot uint32, rec []byte) error {
	t := &Fragment{LSN: lsn, TotLen: tot, Len: uint32(len(rec))}
	k := min(len(rec), FragmentCap)
	t.Prefix = bytes.Clone(rec[:k])
	if k < len(rec) {
		t.RestCRC = crc32c(rec[k:])
	}
	wk.w.Tail = t
	w := wk.w
	if w.FirstRecord == 0 {
		w.FirstRecord = lsn
		if len(rec) >= recordHeaderSize {
			w.FirstPrev = pg.LSN(binary.LittleEndian.Uint64(rec[8:]))
		}
	}
	w.LastRecord = lsn
	r := &wk.rec
	if err := decodeRecord(wk.l, rec, tot, r); err != nil {
		return nil // decoded again, verified, when stitched to the next segment
	}
	if needsMain(r) && r.MainLen > 0 && r.Main == nil {
		return nil
	}
	r.LSN, r.End, r.Verified = lsn, 0, false
	w.Records++
	if err := wk.fn(r); err != nil {
		return err
	}
	t.Applied = true
	return nil
}

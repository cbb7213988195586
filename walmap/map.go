package walmap

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"

	"github.com/pgkeep/pgkeep/pg"
)

// ParserVersion is stored in every map: a map built by an older walker
// can be told apart (and rebuilt) when the walker learns more.
const ParserVersion = 1

// NoLimit is a fork's limit block when nothing in the range created,
// dropped or truncated it (InvalidBlockNumber).
const NoLimit = math.MaxUint32

// Fork is what a map knows about one relation fork over its range.
type Fork struct {
	RelFork
	// Limit is the shortest length (in blocks) the fork had during the
	// range: 0 when it was created or dropped, the new length after a
	// truncation, NoLimit otherwise. Every block at or above it must be
	// read from the live file.
	Limit uint32
	// Blocks are the changed blocks, sorted and distinct. Blocks changed
	// before the fork's limit was set, at or above it, are not listed.
	Blocks []uint32
}

// EventKind is a database-level change: every file under (Spc, DB), or
// under tablespace Spc, must be read whole.
type EventKind uint8

const (
	// EventDBCreateFileCopy: CREATE DATABASE by copying directories
	// (STRATEGY file_copy, every CREATE DATABASE before 15; ALTER DATABASE
	// SET TABLESPACE). No per-file record exists.
	EventDBCreateFileCopy EventKind = iota + 1
	// EventDBCreateWALLog: CREATE DATABASE STRATEGY wal_log (15+); its
	// files come with SMGR creates and block images.
	EventDBCreateWALLog
	// EventDBDrop: DROP DATABASE (one event per tablespace it had files in).
	EventDBDrop
	EventTablespaceCreate
	EventTablespaceDrop
	maxEventKind = EventTablespaceDrop
)

func (k EventKind) String() string {
	switch k {
	case EventDBCreateFileCopy:
		return "db-create-file-copy"
	case EventDBCreateWALLog:
		return "db-create-wal-log"
	case EventDBDrop:
		return "db-drop"
	case EventTablespaceCreate:
		return "tablespace-create"
	case EventTablespaceDrop:
		return "tablespace-drop"
	}
	return fmt.Sprintf("event-%d", uint8(k))
}

// Event is one database- or tablespace-level change. DB is 0 for the
// tablespace events; SrcSpc and SrcDB are set for EventDBCreateFileCopy.
type Event struct {
	LSN           pg.LSN
	Kind          EventKind
	Spc, DB       uint32
	SrcSpc, SrcDB uint32
}

// UnknownReason says why a part of the WAL is not covered by a map.
type UnknownReason uint8

const (
	// UnknownFormat: not a WAL segment of a version walmap knows, or not
	// the named segment.
	UnknownFormat UnknownReason = iota + 1
	// UnknownInvalid: a CRC mismatch or malformed record or page from here on.
	UnknownInvalid
	// UnknownEndOfWAL: valid WAL ends before the segment does (normal for
	// a .partial segment; for an archived full segment a gap).
	UnknownEndOfWAL
	// UnknownTruncated: the segment's bytes end early.
	UnknownTruncated
	// UnknownSpecial: a record with XLR_SPECIAL_REL_UPDATE that walmap does
	// not decode (a custom rmgr, a new opcode): it changed relation files
	// in a way no block reference tells.
	UnknownSpecial
	// UnknownWALLevel: wal_level was set below replica; records for new
	// relfilenodes may be missing from WAL.
	UnknownWALLevel
	// UnknownDecode: a record walmap must read (SMGR, XACT, DBASE, TBLSPC)
	// has main data it cannot parse, or the main data is not at hand.
	UnknownDecode
	// UnknownStitch: the record straddling two maps' boundary did not
	// stitch (CRC mismatch, length mismatch, broken xl_prev chain).
	UnknownStitch
	// UnknownGap: Merge was given maps that leave a hole in the range.
	UnknownGap
	maxUnknownReason = UnknownGap
)

func (r UnknownReason) String() string {
	switch r {
	case UnknownFormat:
		return "format"
	case UnknownInvalid:
		return "invalid"
	case UnknownEndOfWAL:
		return "end-of-wal"
	case UnknownTruncated:
		return "truncated"
	case UnknownSpecial:
		return "special-rel-update"
	case UnknownWALLevel:
		return "wal-level"
	case UnknownDecode:
		return "decode"
	case UnknownStitch:
		return "stitch"
	case UnknownGap:
		return "gap"
	}
	return fmt.Sprintf("reason-%d", uint8(r))
}

// Unknown marks records starting in [Start, End) that the map does not
// account for. RmID and Info name the record for UnknownSpecial,
// UnknownWALLevel and UnknownDecode.
type Unknown struct {
	Start, End pg.LSN
	Reason     UnknownReason
	RmID, Info uint8
}

// Map flags.
const (
	// FlagOverwriteAtStart: the first page carries
	// XLP_FIRST_IS_OVERWRITE_CONTRECORD: the previous segment's unfinished
	// last record was abandoned by crash recovery.
	FlagOverwriteAtStart = 1 << 0
	flagsKnown           = FlagOverwriteAtStart
)

// Map is the block map of a WAL range: one segment, or a merge of
// consecutive ones. It accounts for every record that starts in
// [Start, End), except those in Unknown ranges and an unapplied Tail.
type Map struct {
	ParserVersion uint32
	WALMagic      uint16
	SystemID      uint64
	// Timeline is the segment's (for a merge, the last segment's).
	Timeline     uint32
	SegmentSize  uint32
	WALBlockSize uint32
	Start, End   pg.LSN
	// FirstRecord and LastRecord start the first and last record that
	// starts in the range (0 if none); FirstPrev is the first one's xl_prev.
	FirstRecord, LastRecord, FirstPrev pg.LSN
	Records                            uint64
	Flags                              uint32
	// SegmentSHA256 is the SHA-256 of the segment's bytes, for a map of
	// one segment whose builder was given it (zero otherwise); a map is
	// valid only with exactly those bytes.
	SegmentSHA256 [32]byte
	Head, Tail    *Fragment
	Forks         []Fork    // sorted by RelFork
	Events        []Event   // in LSN order
	Unknown       []Unknown // in LSN order
}

// Covers reports whether the map accounts for every record starting in
// [from, to): inside the range, no unknown marker overlapping it, and no
// record straddling the range's end whose CRC is still unchecked.
func (m *Map) Covers(from, to pg.LSN) error {
	if from < m.Start || to > m.End || from > to {
		return fmt.Errorf("map covers %s..%s, not %s..%s", m.Start, m.End, from, to)
	}
	for _, u := range m.Unknown {
		if u.Start < to && from < u.End {
			return fmt.Errorf("WAL %s..%s is not mapped (%s)", u.Start, u.End, u.Reason)
		}
	}
	if t := m.Tail; t != nil && t.LSN >= from && t.LSN < to {
		return fmt.Errorf("record at %s continues past %s: its CRC is unchecked until the next segment's map is merged", t.LSN, m.End)
	}
	return nil
}

// Fork returns the entry for k, or nil.
func (m *Map) Fork(k RelFork) *Fork {
	i := sort.Search(len(m.Forks), func(i int) bool { return !m.Forks[i].RelFork.less(k) })
	if i < len(m.Forks) && m.Forks[i].RelFork == k {
		return &m.Forks[i]
	}
	return nil
}

// forkAcc accumulates one fork's blocks in record order.
type forkAcc struct {
	limit  uint32
	blocks []uint32
}

// builder turns records into a map, applying them in LSN order.
type builder struct {
	l     *layout
	forks map[RelFork]*forkAcc
	// recent caches forks looked up, direct-mapped by a hash of the
	// relation: a workload touches a handful of relations in turn (pgbench:
	// accounts, tellers, branches, history and their indexes), and a map
	// lookup per block reference was a third of the walk; one compare per
	// reference instead of a scan of the last few.
	recent  [64]recentFork
	events  []Event
	unknown []Unknown
}

func newBuilder(l *layout) *builder {
	return &builder{l: l, forks: make(map[RelFork]*forkAcc)}
}

type recentFork struct {
	k RelFork
	a *forkAcc
}

func (b *builder) fork(k RelFork) *forkAcc {
	r := &b.recent[(k.Rel*0x9E3779B1+k.DB*0x85EBCA77+uint32(k.Fork))>>26]
	if r.a != nil && r.k == k {
		return r.a
	}
	a := b.forks[k]
	if a == nil {
		a = &forkAcc{limit: NoLimit}
		b.forks[k] = a
	}
	*r = recentFork{k, a}
	return a
}

// setLimit lowers a fork's limit and forgets its blocks at or above the
// new one (blkreftable's BlockRefTableSetLimitBlock).
func (b *builder) setLimit(k RelFork, limit uint32) {
	a := b.fork(k)
	a.limit = min(a.limit, limit)
	kept := a.blocks[:0]
	for _, blk := range a.blocks {
		if blk < limit {
			kept = append(kept, blk)
		}
	}
	a.blocks = kept
}

func (b *builder) mark(r *Record, reason UnknownReason) {
	end := r.End
	if end == 0 {
		end = r.LSN + 1
	}
	b.unknown = append(b.unknown, Unknown{Start: r.LSN, End: end, Reason: reason, RmID: r.RmID, Info: r.Info})
}

// needsMain tells which records walmap reads the main data of.
func needsMain(r *Record) bool {
	switch r.RmID {
	case RmXact, RmSmgr, RmDbase, RmTblspc:
		return true
	case RmXLOG:
		return r.Info&^xlrInfoMask == xlogParameterChange
	}
	return r.Info&xlrSpecialRelUpdate != 0
}

// record applies one record.
func (b *builder) record(r *Record) error {
	for i := range r.Blocks {
		br := &r.Blocks[i]
		a := b.fork(br.RelFork)
		// Skip the commonest duplicate (the same page again) before the sort.
		if n := len(a.blocks); n == 0 || a.blocks[n-1] != br.Block {
			a.blocks = append(a.blocks, br.Block)
		}
	}
	if !needsMain(r) {
		return nil
	}
	if r.MainLen > 0 && r.Main == nil {
		b.mark(r, UnknownDecode)
		return nil
	}
	if !b.main(r) {
		b.mark(r, UnknownDecode)
	}
	return nil
}

// main applies the main data of the records that change files without a
// block reference; false means it is malformed.
func (b *builder) main(r *Record) bool {
	le := binary.LittleEndian
	d := r.Main
	op := r.Info &^ xlrInfoMask
	special := r.Info&xlrSpecialRelUpdate != 0
	rel := func(p []byte) RelFork {
		return RelFork{Spc: le.Uint32(p), DB: le.Uint32(p[4:]), Rel: le.Uint32(p[8:])}
	}
	switch r.RmID {
	case RmXLOG:
		// xl_parameter_change: six ints, wal_level the sixth.
		if len(d) < 24 {
			return false
		}
		if int32(le.Uint32(d[20:])) < walLevelReplica {
			b.mark(r, UnknownWALLevel)
		}
		return true
	case RmSmgr:
		switch op {
		case smgrCreate: // xl_smgr_create {rlocator, forkNum}
			if len(d) < 16 {
				return false
			}
			k := rel(d)
			f := le.Uint32(d[12:])
			if f > maxFork {
				return false
			}
			k.Fork = uint8(f)
			b.setLimit(k, 0)
			return true
		case smgrTruncate: // xl_smgr_truncate {blkno, rlocator, flags}
			if len(d) < 20 {
				return false
			}
			blk, k, flags := le.Uint32(d), rel(d[4:]), le.Uint32(d[16:])
			if flags&smgrTruncHeap != 0 {
				k.Fork = ForkMain
				b.setLimit(k, blk)
			}
			// The VM and FSM shrink to sizes derived from the heap's; pgkeep
			// copies those forks whole, so "read everything" is exact enough.
			if flags&smgrTruncVM != 0 {
				k.Fork = ForkVM
				b.setLimit(k, 0)
			}
			if flags&smgrTruncFSM != 0 {
				k.Fork = ForkFSM
				b.setLimit(k, 0)
			}
			return true
		}
	case RmXact:
		switch op & xactOpMask {
		case xactCommit, xactAbort, xactCommitPrepared, xactAbortPrepared:
			return b.xactRels(r, d)
		}
	case RmDbase:
		l := b.l
		switch {
		case op == l.dbaseCreateFileCopy: // {db, ts, src_db, src_ts}
			if len(d) < 16 {
				return false
			}
			b.events = append(b.events, Event{LSN: r.LSN, Kind: EventDBCreateFileCopy, DB: le.Uint32(d), Spc: le.Uint32(d[4:]),
				SrcDB: le.Uint32(d[8:]), SrcSpc: le.Uint32(d[12:])})
			return true
		case op == l.dbaseCreateWALLog: // {db, ts}
			if len(d) < 8 {
				return false
			}
			b.events = append(b.events, Event{LSN: r.LSN, Kind: EventDBCreateWALLog, DB: le.Uint32(d), Spc: le.Uint32(d[4:])})
			return true
		case op == l.dbaseDrop: // {db, ntablespaces, ts[]}
			if len(d) < 8 {
				return false
			}
			db, n := le.Uint32(d), int32(le.Uint32(d[4:]))
			if n < 0 || len(d) < 8+4*int(n) {
				return false
			}
			for i := 0; i < int(n); i++ {
				b.events = append(b.events, Event{LSN: r.LSN, Kind: EventDBDrop, DB: db, Spc: le.Uint32(d[8+4*i:])})
			}
			return true
		}
		// Every DBASE record changes files; one walmap cannot read is unknown.
		b.mark(r, UnknownSpecial)
		return true
	case RmTblspc:
		switch op {
		case tblspcCreate, tblspcDrop:
			if len(d) < 4 {
				return false
			}
			k := EventTablespaceCreate
			if op == tblspcDrop {
				k = EventTablespaceDrop
			}
			b.events = append(b.events, Event{LSN: r.LSN, Kind: k, Spc: le.Uint32(d)})
			return true
		}
	}
	if special {
		b.mark(r, UnknownSpecial)
	}
	return true
}

// xactRels sets limit 0 on every fork of the relations a commit or abort
// record unlinks (xl_xact_commit/abort: xact_time, then with
// XLOG_XACT_HAS_INFO xinfo and the optional parts in order).
func (b *builder) xactRels(r *Record, d []byte) bool {
	le := binary.LittleEndian
	if len(d) < 8 {
		return false
	}
	if r.Info&xactHasInfo == 0 {
		return true
	}
	p := 8
	if len(d) < p+4 {
		return false
	}
	xinfo := le.Uint32(d[p:])
	p += 4
	if xinfo&xinfoHasDBInfo != 0 {
		p += 8
	}
	if xinfo&xinfoHasSubxacts != 0 {
		if len(d) < p+4 {
			return false
		}
		n := int32(le.Uint32(d[p:]))
		if n < 0 {
			return false
		}
		p += 4 + 4*int(n)
	}
	if xinfo&xinfoHasRelfiles == 0 {
		return len(d) >= p
	}
	if len(d) < p+4 {
		return false
	}
	n := int32(le.Uint32(d[p:]))
	p += 4
	if n < 0 || len(d) < p+12*int(n) {
		return false
	}
	for i := 0; i < int(n); i++ {
		q := d[p+12*i:]
		k := RelFork{Spc: le.Uint32(q), DB: le.Uint32(q[4:]), Rel: le.Uint32(q[8:])}
		for f := uint8(0); f <= maxFork; f++ {
			k.Fork = f
			b.setLimit(k, 0)
		}
	}
	return true
}

// forksSorted returns the accumulated forks, blocks sorted and distinct.
func (b *builder) forksSorted() []Fork {
	out := make([]Fork, 0, len(b.forks))
	var tmp []uint32
	for k, a := range b.forks {
		tmp = sortBlocks(a.blocks, tmp)
		out = append(out, Fork{RelFork: k, Limit: a.limit, Blocks: slices.Clip(slices.Compact(a.blocks))})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].RelFork.less(out[j].RelFork) })
	return out
}

// Build walks one segment and returns its map. Problems with the WAL
// itself (an unknown version, a CRC error, an early end) are not errors:
// they become unknown markers. Errors are for bad arguments.
func Build(data []byte, name string, segmentSize uint32) (*Map, error) {
	var b *builder
	w, err := Walk(data, name, segmentSize, func(r *Record) error {
		if b == nil {
			b = newBuilder(r.l)
		}
		return b.record(r)
	})
	if err != nil {
		return nil, err
	}
	if b == nil {
		b = newBuilder(nil)
	}
	return b.finish(w), nil
}

// BuildReader is Build for a segment read from r.
func BuildReader(r io.Reader, name string, segmentSize uint32) (*Map, error) {
	data, err := ReadSegment(r, segmentSize)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return Build(data, name, segmentSize)
}

// BuildWithHash is Build that also stores the segment's SHA-256 (which
// wal-push computes anyway) in the map.
func BuildWithHash(data []byte, name string, segmentSize uint32) (*Map, error) {
	m, err := Build(data, name, segmentSize)
	if err != nil {
		return nil, err
	}
	m.SegmentSHA256 = sha256.Sum256(data)
	return m, nil
}

func (b *builder) finish(w *Walked) *Map {
	m := &Map{
		ParserVersion: ParserVersion, WALMagic: w.Magic, SystemID: w.SystemID, Timeline: w.Timeline,
		SegmentSize: w.SegmentSize, WALBlockSize: w.BlockSize, Start: w.Start, End: w.End,
		FirstRecord: w.FirstRecord, LastRecord: w.LastRecord, FirstPrev: w.FirstPrev, Records: uint64(w.Records),
		Head: w.Head, Tail: w.Tail,
	}
	if w.OverwriteAtStart {
		m.Flags |= FlagOverwriteAtStart
	}
	m.Forks = b.forksSorted()
	m.Events = b.events
	m.Unknown = b.unknown
	var reason UnknownReason
	switch w.Reason {
	case EndUnknownFormat:
		reason = UnknownFormat
	case EndInvalid:
		reason = UnknownInvalid
	case EndOfWAL:
		reason = UnknownEndOfWAL
	case EndTruncated:
		reason = UnknownTruncated
	}
	if reason != 0 {
		m.Unknown = append(m.Unknown, Unknown{Start: w.ValidEnd, End: w.End, Reason: reason})
	}
	return m
}

// sortBlocks sorts a in place; large slices by an LSD radix sort (three
// 11-bit digits), which is several times faster than a comparison sort on
// the ~10^5 block numbers of a busy segment. tmp is scratch space, returned
// for reuse.
func sortBlocks(a, tmp []uint32) []uint32 {
	if len(a) < 512 {
		slices.Sort(a)
		return tmp
	}
	if cap(tmp) < len(a) {
		tmp = make([]uint32, len(a))
	}
	tmp = tmp[:len(a)]
	src, dst := a, tmp
	for shift := uint(0); shift < 33; shift += 11 {
		var count [2048]int
		for _, v := range src {
			count[(v>>shift)&2047]++
		}
		if count[(src[0]>>shift)&2047] == len(src) {
			continue // every value has this digit: nothing to move
		}
		sum := 0
		for i := range count {
			count[i], sum = sum, sum+count[i]
		}
		for _, v := range src {
			d := (v >> shift) & 2047
			dst[count[d]] = v
			count[d]++
		}
		src, dst = dst, src
	}
	if &src[0] != &a[0] {
		copy(a, src)
	}
	return tmp
}

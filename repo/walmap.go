package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/walmap"
)

// WAL block maps (docs/format-walmap.md) as objects of the repository:
// one per archived segment, written by wal-push beside it, and roll-ups
// of RollupSegments consecutive segments' maps, written lazily by
// WALMapsCovering. Both live in the segment's wal/<TTTTTTTTLLLLLLLL>/
// directory under names no WAL file can have, so every reader that parses
// names with pg.ParseWALFileName skips them, and ListWAL leaves them out.

const (
	walMapSuffix    = ".map"
	walRollupSuffix = ".maps"
	// RollupSegments is how many consecutive segments one roll-up covers
	// (fewer when a "log" of 4 GiB holds fewer segments, as with 1 GiB
	// segments): a day of WAL at one 16 MiB segment a second is 1350
	// roll-ups plus at most 2x63 segment maps at the range's ends.
	RollupSegments = 64
)

// rollupSegments is RollupSegments, smaller in tests.
var rollupSegments = RollupSegments

// WALMapObjectName is where the block map of a segment or .partial file
// lives: beside it, with ".map" appended.
func WALMapObjectName(f pg.WALFile) string { return WALObjectName(f) + walMapSuffix }

// WALRollupObjectName is where the roll-up of the maps of segments first..last
// (one timeline, one log directory) lives.
func WALRollupObjectName(first, last pg.WALFile) string {
	return "wal/" + first.Name[:16] + "/" + first.Name + "-" + last.Name + walRollupSuffix
}

// parseWALMapName parses the base name of a map object: a segment's map
// gives its segment twice, a roll-up its first and last segment.
func parseWALMapName(name string) (first, last pg.WALFile, rollup, ok bool) {
	if base, found := strings.CutSuffix(name, walMapSuffix); found {
		wf, err := pg.ParseWALFileName(base)
		if err != nil || (wf.Kind != pg.KindSegment && wf.Kind != pg.KindPartial) {
			return first, last, false, false
		}
		return wf, wf, false, true
	}
	base, found := strings.CutSuffix(name, walRollupSuffix)
	if !found || len(base) != 49 || base[24] != '-' {
		return first, last, false, false
	}
	f, err1 := pg.ParseWALFileName(base[:24])
	l, err2 := pg.ParseWALFileName(base[25:])
	if err1 != nil || err2 != nil || f.Kind != pg.KindSegment || l.Kind != pg.KindSegment ||
		f.Name[:16] != l.Name[:16] || f.Seg > l.Seg {
		return first, last, false, false
	}
	return f, l, true, true
}

// IsWALMapName reports whether a base name under wal/ is a block map or a
// roll-up of maps rather than a WAL file.
func IsWALMapName(name string) bool {
	_, _, _, ok := parseWALMapName(name)
	return ok
}

// PutWALSegment is PutWAL for a segment or .partial file f (freshly
// opened) that, when buildMap is not nil, also builds the segment's block
// map from the same bytes, read once, beside their hashing and
// compression, and stores it as soon as it is built and the bytes are
// hashed: the map's small put runs while the segment is still being
// compressed and uploaded, so it adds little to wal-push. A map may so
// become visible before its segment, which is safe: every reader finds a
// map from its archived segment (WALMapsCovering, verify) and takes it only
// for the bytes of its SegmentSHA256; a map stored for a put that then
// fails is removed again (best effort). The map is put also when an
// identical copy was archived already (a push killed between the two).
// mapErr says why no map was stored (not built, or its put failed); it
// never fails the segment's put.
func (r *Repository) PutWALSegment(ctx context.Context, wf pg.WALFile, f *os.File, size int64, buildMap func(data []byte) (*walmap.Map, error)) (sum [32]byte, mapErr error, err error) {
	if err := r.CheckWritable(ctx); err != nil {
		return [32]byte{}, nil, err
	}
	name := WALObjectName(wf)
	opts := storage.PutOptions{IfAbsent: true}
	var created bool
	storeMap := func(data []byte, hashed func() ([32]byte, bool)) {
		if buildMap == nil {
			return
		}
		m, err := buildMap(data)
		if err == nil && m == nil {
			err = errors.New("the walker did not run")
		}
		if err != nil {
			mapErr = &MapNotBuiltError{Err: err}
			return
		}
		s, ok := hashed()
		if !ok {
			mapErr = &MapNotBuiltError{Err: errors.New("the segment could not be read")}
			return
		}
		m.SegmentSHA256 = s // the stored object's hash: the map is valid only with those bytes
		created, mapErr = r.putWALMap(ctx, wf, m)
	}
	defer func() {
		if err != nil && created {
			r.backend.Delete(context.WithoutCancel(ctx), WALMapObjectName(wf))
		}
	}()
	if r.codec.Level > 0 && size > 0 && size <= 1<<30 {
		sum, err := r.putFileInspect(name, f, size, func(body io.Reader) error {
			return r.backend.Put(ctx, name, body, opts)
		}, storeMap)
		if !errors.Is(err, errNotMapped) {
			sum, err = r.settleWALPut(ctx, wf, sum, size, err)
			return sum, mapErr, err
		}
	}
	// Not mapped (compression off, a filesystem without mmap): one buffer.
	data := make([]byte, size)
	if _, err := io.ReadFull(io.NewSectionReader(f, 0, size), data); err != nil {
		return [32]byte{}, nil, fmt.Errorf("read %s: %w", name, err)
	}
	sum = sha256.Sum256(data)
	sum, err = r.settleWALPut(ctx, wf, sum, size, r.PutBytes(ctx, name, data, sum, opts))
	if err == nil {
		storeMap(data, func() ([32]byte, bool) { return sum, true })
	}
	return sum, mapErr, err
}

// MapNotBuiltError is PutWALSegment's mapErr when the map could not be
// built (as opposed to built but not stored).
type MapNotBuiltError struct{ Err error }

func (e *MapNotBuiltError) Error() string { return e.Err.Error() }
func (e *MapNotBuiltError) Unwrap() error { return e.Err }

// settleWALPut turns a create-if-absent that found the name taken into
// success when the archived copy is the same content (see PutWAL).
func (r *Repository) settleWALPut(ctx context.Context, wf pg.WALFile, sum [32]byte, size int64, err error) ([32]byte, error) {
	if err == nil || !errors.Is(err, ErrExists) {
		return sum, err
	}
	err = r.CompareWAL(ctx, wf, sum, size)
	if errors.Is(err, ErrNotFound) {
		err = fmt.Errorf("check archived copy: %w", err)
	}
	return sum, err
}

// PutWALMap stores m as the block map of wf, create-if-absent: a map
// already there stays (verify judges it against the segment).
func (r *Repository) PutWALMap(ctx context.Context, wf pg.WALFile, m *walmap.Map) error {
	_, err := r.putWALMap(ctx, wf, m)
	return err
}

// putWALMap is PutWALMap that also says whether this call created the map.
func (r *Repository) putWALMap(ctx context.Context, wf pg.WALFile, m *walmap.Map) (created bool, err error) {
	err = r.PutObject(ctx, WALMapObjectName(wf), m.Marshal(), storage.PutOptions{IfAbsent: true})
	if errors.Is(err, ErrExists) {
		return false, nil
	}
	return err == nil, err
}

// HasWALMap reports whether wf has a stored block map.
func (r *Repository) HasWALMap(ctx context.Context, wf pg.WALFile) (bool, error) {
	_, err := r.backend.Stat(ctx, WALMapObjectName(wf))
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// FetchWALMap reads and decodes the block map of wf. No map gives an error
// wrapping ErrNotFound; an undecodable one an error naming the object.
func (r *Repository) FetchWALMap(ctx context.Context, wf pg.WALFile) (*walmap.Map, error) {
	return r.fetchMapObject(ctx, WALMapObjectName(wf))
}

func (r *Repository) fetchMapObject(ctx context.Context, name string) (*walmap.Map, error) {
	var buf bytes.Buffer
	if _, err := r.GetObject(ctx, name, &buf); err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, err
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	m, err := walmap.Unmarshal(buf.Bytes())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return m, nil
}

// ErrNotCovered means block maps do not account for a WAL range; the
// error wrapping it (a *NotCoveredError) says why. A backup then falls
// back to hash mode.
var ErrNotCovered = errors.New("not covered by block maps")

// NotCoveredError is WALMapsCovering's explicit "no": the range and the
// first reason found.
type NotCoveredError struct {
	From, To pg.LSN
	Reason   string
}

func (e *NotCoveredError) Error() string {
	return fmt.Sprintf("WAL %s..%s is %s: %s", e.From, e.To, ErrNotCovered, e.Reason)
}

func (e *NotCoveredError) Unwrap() error { return ErrNotCovered }

// WALPath is the timeline history a range is read along, as recovery
// would: segment n comes from pg.TimelineForSegment(Timeline, History, n).
type WALPath struct {
	Timeline    uint32
	History     []pg.TimelineSwitch
	SegmentSize int64
	// Local are maps of segments that may not be archived with a map
	// yet (the one a backup starts in, those the archiver is still on),
	// built from the server's pg_wal; the caller checks those bytes
	// against the archived segments later. One stands in for its
	// segment's stored map only while there is none.
	Local []*walmap.Map
}

// segment is the file of segment number n along the path: the timeline
// the history puts n on.
func (p WALPath) segment(n uint64) pg.WALFile {
	return p.segmentOn(pg.TimelineForSegment(p.Timeline, p.History, n, p.SegmentSize), n)
}

// segmentOn is the file of segment number n on timeline tli.
func (p WALPath) segmentOn(tli uint32, n uint64) pg.WALFile {
	per := uint64(pg.SegmentsPerLog(p.SegmentSize))
	wf, _ := pg.ParseWALFileName(pg.SegmentName(tli, uint32(n/per), uint32(n%per)))
	return wf
}

// WALMapsCovering returns the merged block map of the WAL from from to to
// along path, or an error wrapping ErrNotCovered (a *NotCoveredError) that
// says why not: a segment not archived, a segment without a map, a map of
// other bytes or another walker version, an unknown marker or a failed
// stitch in the range. It reads a roll-up for every group of
// RollupSegments segments that is on one timeline of the path, and writes
// a missing roll-up when every segment of its group is archived with a
// map (so a later call reads one object instead of RollupSegments), for
// the groups wholly inside the range; the segments at its ends come from
// their own maps. The merged map starts at the segment of from and ends
// at the segment of to (or the one a record crossing to ends in): blocks
// outside the range would only make a backup read more.
func (r *Repository) WALMapsCovering(ctx context.Context, path WALPath, from, to pg.LSN) (*walmap.Map, error) {
	size := path.SegmentSize
	if !pg.ValidSegmentSize(size) {
		return nil, fmt.Errorf("block maps: invalid WAL segment size %d", size)
	}
	if from >= to {
		return nil, fmt.Errorf("block maps: empty range %s..%s", from, to)
	}
	notCovered := func(format string, args ...any) error {
		return &NotCoveredError{From: from, To: to, Reason: fmt.Sprintf(format, args...)}
	}
	seg := uint64(size)
	per := uint64(pg.SegmentsPerLog(size))
	group := min(uint64(rollupSegments), per)
	l := walListing{r: r, dirs: map[string]map[string]storage.ObjectInfo{}, local: path.Local}
	name := path.segmentOn
	var parts []*walmap.Map
	first, last := uint64(from)/seg, (uint64(to)-1)/seg
	for n := first; n <= last; {
		tli := pg.TimelineForSegment(path.Timeline, path.History, n, size)
		g0, g1 := n-n%group, n-n%group+group-1
		// Only a group wholly inside the range: a roll-up reaching before
		// from (or past to) brings in every block changed there, which
		// map mode would read (a reference taken soon after a bulk load
		// read the load's pages again, and the relations it created went
		// by the hash rule).
		if g0 >= first && g1 <= last && pg.TimelineForSegment(path.Timeline, path.History, g0, size) == tli &&
			pg.TimelineForSegment(path.Timeline, path.History, g1, size) == tli {
			m, err := r.rollup(ctx, &l, name(tli, g0), name(tli, g1), seg)
			if err != nil {
				return nil, err
			}
			if m != nil {
				parts = append(parts, m)
				n = g1 + 1
				continue
			}
		}
		wf := name(tli, n)
		m, why, err := r.segmentMap(ctx, &l, wf)
		if err != nil {
			return nil, err
		}
		if why != "" {
			return nil, notCovered("%s", why)
		}
		parts = append(parts, m)
		n++
	}
	// A record starting before to that continues past the last segment is
	// in the range: its block references may be in the next segment's
	// bytes, and its CRC is checked only once the maps are stitched.
	for n := last + 1; ; n++ {
		t := parts[len(parts)-1].Tail
		if t == nil || t.LSN >= to {
			break
		}
		wf := path.segment(n)
		m, why, err := r.segmentMap(ctx, &l, wf)
		if err != nil {
			return nil, err
		}
		if why != "" {
			return nil, notCovered("the record at %s continues in the next segment: %s", t.LSN, why)
		}
		parts = append(parts, m)
	}
	merged, err := walmap.Merge(parts...)
	if err != nil {
		return nil, notCovered("%v", err)
	}
	if err := merged.Covers(from, to); err != nil {
		return nil, notCovered("%v", err)
	}
	return merged, nil
}

// ArchivedSegment is what the repository holds of one segment of a range.
type ArchivedSegment struct {
	File     pg.WALFile
	Archived bool // the segment is stored
	HasMap   bool // its block map is stored
}

// WALArchived says, for every segment of [from, to) along path (oldest
// first), whether it is archived and whether its block map is, from one
// listing of each log directory the range spans. Segments may be archived
// out of order (wal-push pushes ahead), so a backup's map plan asks about
// each one; a Stat each would be a request per segment.
func (r *Repository) WALArchived(ctx context.Context, path WALPath, from, to pg.LSN) ([]ArchivedSegment, error) {
	size := path.SegmentSize
	if !pg.ValidSegmentSize(size) {
		return nil, fmt.Errorf("WAL archived: invalid WAL segment size %d", size)
	}
	if from >= to {
		return nil, nil
	}
	seg := uint64(size)
	l := walListing{r: r, dirs: map[string]map[string]storage.ObjectInfo{}}
	var out []ArchivedSegment
	for n := uint64(from) / seg; n <= (uint64(to)-1)/seg; n++ {
		wf := path.segment(n)
		_, archived, err := l.get(ctx, WALObjectName(wf))
		if err != nil {
			return nil, err
		}
		_, hasMap, err := l.get(ctx, WALMapObjectName(wf))
		if err != nil {
			return nil, err
		}
		out = append(out, ArchivedSegment{File: wf, Archived: archived, HasMap: hasMap})
	}
	return out, nil
}

// walListing lists each wal/<TL+log>/ directory once per call.
type walListing struct {
	r    *Repository
	dirs map[string]map[string]storage.ObjectInfo
	// unusable roll-ups (or groups that cannot be rolled up): not tried
	// again for every segment of their group.
	noRollup map[string]bool
	local    []*walmap.Map // WALPath.Local
}

// localMap is the WALPath.Local map of wf, or nil.
func (l *walListing) localMap(wf pg.WALFile) *walmap.Map {
	for _, m := range l.local {
		if m.Timeline == wf.Timeline && m.SegmentSize > 0 && m.Start == pg.LSN(wf.SegNo(int64(m.SegmentSize))*uint64(m.SegmentSize)) {
			return m
		}
	}
	return nil
}

func (l *walListing) get(ctx context.Context, objectName string) (storage.ObjectInfo, bool, error) {
	dir := objectName[:strings.LastIndexByte(objectName, '/')+1]
	objs, ok := l.dirs[dir]
	if !ok {
		objs = map[string]storage.ObjectInfo{}
		err := l.r.backend.List(ctx, dir, func(o storage.ObjectInfo) error {
			objs[o.Name] = o
			return nil
		})
		if err != nil {
			return storage.ObjectInfo{}, false, fmt.Errorf("list %s: %w", dir, err)
		}
		l.dirs[dir] = objs
	}
	o, ok := objs[objectName]
	return o, ok, nil
}

// segmentMap returns wf's map if it may be used for wf's archived bytes,
// or why not. Errors are the store's.
func (r *Repository) segmentMap(ctx context.Context, l *walListing, wf pg.WALFile) (*walmap.Map, string, error) {
	if _, ok, err := l.get(ctx, WALObjectName(wf)); err != nil {
		return nil, "", err
	} else if !ok {
		if m := l.localMap(wf); m != nil {
			return m, "", nil
		}
		return nil, fmt.Sprintf("segment %s is not archived", wf.Name), nil
	}
	if _, ok, err := l.get(ctx, WALMapObjectName(wf)); err != nil {
		return nil, "", err
	} else if !ok {
		if m := l.localMap(wf); m != nil {
			return m, "", nil
		}
		return nil, fmt.Sprintf("segment %s has no block map", wf.Name), nil
	}
	m, err := r.FetchWALMap(ctx, wf)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Sprintf("segment %s has no block map", wf.Name), nil
	}
	if err != nil {
		return nil, fmt.Sprintf("block map of %s: %v", wf.Name, err), nil
	}
	if m.ParserVersion != walmap.ParserVersion {
		return nil, fmt.Sprintf("block map of %s was written by walker version %d, this one is %d", wf.Name, m.ParserVersion, walmap.ParserVersion), nil
	}
	if m.Timeline != wf.Timeline || m.Start != pg.LSN(wf.SegNo(int64(m.SegmentSize))*uint64(m.SegmentSize)) {
		return nil, fmt.Sprintf("block map %s is of another segment (timeline %d, %s)", WALMapObjectName(wf), m.Timeline, m.Start), nil
	}
	// A map is valid only with exactly the bytes it was built from.
	h, err := r.Header(ctx, WALObjectName(wf))
	if err != nil {
		return nil, "", fmt.Errorf("check %s: %w", wf.Name, err)
	}
	if m.SegmentSHA256 != h.SHA256 {
		return nil, fmt.Sprintf("block map of %s is of other bytes (SHA-256 %x…, segment %x…)", wf.Name, m.SegmentSHA256[:6], h.SHA256[:6]), nil
	}
	return m, "", nil
}

// rollup returns the roll-up of segments first..last: the stored one, or
// one built (and stored, when the repository is writable) from their maps
// when every segment of the group is archived with a usable map; nil when
// there is none.
func (r *Repository) rollup(ctx context.Context, l *walListing, first, last pg.WALFile, seg uint64) (*walmap.Map, error) {
	name := WALRollupObjectName(first, last)
	if l.noRollup[name] {
		return nil, nil
	}
	m, err := r.rollupOnce(ctx, l, name, first, last, seg)
	if m == nil && err == nil {
		if l.noRollup == nil {
			l.noRollup = map[string]bool{}
		}
		l.noRollup[name] = true
	}
	return m, err
}

func (r *Repository) rollupOnce(ctx context.Context, l *walListing, name string, first, last pg.WALFile, seg uint64) (*walmap.Map, error) {
	start := pg.LSN(first.SegNo(int64(seg)) * seg)
	end := pg.LSN((last.SegNo(int64(seg)) + 1) * seg)
	if _, ok, err := l.get(ctx, name); err != nil {
		return nil, err
	} else if ok {
		m, err := r.fetchMapObject(ctx, name)
		if err == nil && m.ParserVersion == walmap.ParserVersion && m.Start == start && m.End == end {
			return m, nil
		}
		// Unusable (damaged, another walker version): segment maps instead;
		// verify reports it.
		return nil, nil
	}
	per := uint64(pg.SegmentsPerLog(int64(seg)))
	var maps []*walmap.Map
	for n := first.SegNo(int64(seg)); n <= last.SegNo(int64(seg)); n++ {
		wf, _ := pg.ParseWALFileName(pg.SegmentName(first.Timeline, uint32(n/per), uint32(n%per)))
		for _, obj := range []string{WALObjectName(wf), WALMapObjectName(wf)} {
			if _, ok, err := l.get(ctx, obj); err != nil || !ok {
				return nil, err // incomplete group: no roll-up yet
			}
		}
	}
	for n := first.SegNo(int64(seg)); n <= last.SegNo(int64(seg)); n++ {
		wf, _ := pg.ParseWALFileName(pg.SegmentName(first.Timeline, uint32(n/per), uint32(n%per)))
		m, why, err := r.segmentMap(ctx, l, wf)
		if err != nil || why != "" {
			return nil, err
		}
		maps = append(maps, m)
	}
	m, err := walmap.Merge(maps...)
	if err != nil {
		return nil, nil
	}
	if r.CheckWritable(ctx) == nil {
		// Best effort: a roll-up that cannot be stored is built again.
		r.PutObject(ctx, name, m.Marshal(), storage.PutOptions{IfAbsent: true})
	}
	return m, nil
}

// ChangeCapture says how an incremental or checksum backup found what
// changed since its reference (summary field "capture", optional: older
// readers ignore it; docs/format.md, "Change capture").
type ChangeCapture struct {
	// Mode is "map" (relation files: only the blocks the WAL block maps
	// name were read, docs/format-walmap.md) or "hash" (every file whose
	// size or mtime changed was read whole and compared block by block).
	Mode string `json:"mode"`
	// Fallback says why a backup that asked for map mode ran in hash mode.
	Fallback string `json:"fallback,omitempty"`
	// MapFrom and MapTo are the WAL range the maps covered (map mode, and
	// the audit of a checksum backup).
	MapFrom string `json:"map_from,omitempty"`
	MapTo   string `json:"map_to,omitempty"`
	// MappedPages is how many pages of the files read the map named;
	// OldMappedPages how many of them had a page LSN before MapFrom (legal
	// without data checksums: XLOG_HEAP2_VISIBLE does not set the LSN).
	MappedPages    int64 `json:"mapped_pages,omitempty"`
	OldMappedPages int64 `json:"old_mapped_pages,omitempty"`
	// SampledPages is how many unread pages were checked to be older than
	// MapFrom (cross-check B).
	SampledPages int64 `json:"sampled_pages,omitempty"`
	// SplitBlocks is how many blocks map mode stored as composites of
	// their changed pages (docs/format.md "Composite blocks");
	// UnmappedNewPages how many pages of blocks it read had an LSN inside
	// the range though the maps did not name them (stored all the same).
	SplitBlocks      int64 `json:"split_blocks,omitempty"`
	UnmappedNewPages int64 `json:"unmapped_new_pages,omitempty"`
	// Audit is set by --type checksum backups: "ok" when every page that
	// changed in the range was one the maps named, "misses" when some
	// were not (AuditMisses, the first few in AuditExamples), or why the
	// maps could not be compared.
	Audit         string   `json:"audit,omitempty"`
	AuditMisses   int64    `json:"audit_misses,omitempty"`
	AuditExamples []string `json:"audit_examples,omitempty"`
}

package archive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/walmap"
)

// Map mode (docs/backup.md, "Map mode"; ../shared/wal-block-maps.md): an
// incremental whose WAL from the reference's start to its own start is
// covered by block maps reads, of each relation file, only the stored
// blocks holding a page the maps name, plus what changes without a block
// reference require (pages at or above a fork's limit or past the
// reference's length, new files, FSM/VM/init forks, files under a
// database-level event: these go by the hash rule), and takes every other
// block from the reference. A map is a hint that cross-checks overrule:
// pages read must be newer than the map's start (check A), sampled unread
// pages older than the reference's start (check B); a failed check runs
// the whole backup in hash mode. --type checksum backups audit the maps:
// every page that changed in the range must be one they named.

// Capture modes (repo.ChangeCapture.Mode).
const (
	CaptureMap  = "map"
	CaptureHash = "hash"
)

// Tablespace OIDs of the default and the shared (global/) tablespace.
const (
	defaultTablespaceOID = 1663
	globalTablespaceOID  = 1664
)

// relFile maps a data-directory path to the relation fork its file holds
// and the block number of its first page (segment files .N of a relation
// hold blocks from N*RELSEG_SIZE on).
func relFile(rel string) (k walmap.RelFork, first uint32, ok bool) {
	parts := strings.Split(rel, "/")
	var spc, db uint64
	var err error
	switch {
	case len(parts) == 3 && parts[0] == "base":
		spc = defaultTablespaceOID
		db, err = strconv.ParseUint(parts[1], 10, 32)
	case len(parts) == 2 && parts[0] == "global":
		spc = globalTablespaceOID
	case len(parts) == 5 && parts[0] == "pg_tblspc" && strings.HasPrefix(parts[2], "PG_"):
		spc, err = strconv.ParseUint(parts[1], 10, 32)
		if err == nil {
			db, err = strconv.ParseUint(parts[3], 10, 32)
		}
	default:
		return k, 0, false
	}
	if err != nil || spc == 0 {
		return k, 0, false
	}
	segno, ok := pg.ChecksummedFile(rel)
	if !ok {
		return k, 0, false
	}
	node, fork, ok := pg.RelationFork(parts[len(parts)-1])
	if !ok {
		return k, 0, false
	}
	relno, err := strconv.ParseUint(node, 10, 32)
	if err != nil || uint64(segno)*pg.RelSegBlocks > 0xFFFFFFFF {
		return k, 0, false
	}
	k = walmap.RelFork{Spc: uint32(spc), DB: uint32(db), Rel: uint32(relno)}
	switch fork {
	case "":
		k.Fork = walmap.ForkMain
	case "fsm":
		k.Fork = walmap.ForkFSM
	case "vm":
		k.Fork = walmap.ForkVM
	case "init":
		k.Fork = walmap.ForkInit
	default:
		return k, 0, false
	}
	return k, segno * pg.RelSegBlocks, true
}

// fileCut is how the pipeline cuts a file of size bytes into stored
// blocks: the block size, how many blocks one job (a chunk) holds, and
// the small block size recorded in the manifest (0: whole blocks).
func fileCut(size int64, rf *repo.File, o BackupOptions) (bs, run, small int64) {
	bs, run = o.BlockSize, 1
	small = fileBlockSize(size, o.BlockSize)
	if rf != nil && rf.BlockSize > 0 && rf.BlockSize < o.BlockSize && small > 0 {
		// Keep the reference's cut: a file growing past a size step
		// must not be stored again whole.
		small = rf.BlockSize
	}
	if small > 0 && !o.wholeBlocks {
		return small, max(1, min(chunkPlainSize, o.BlockSize)/small), small
	}
	return bs, run, 0
}

// mapPlan is what the merged block map of [from, to) says about one
// backup's files.
type mapPlan struct {
	m        *walmap.Map
	from, to pg.LSN
	dbEvent  map[[2]uint32]bool // (spc, db) under a database-level event
	spcEvent map[uint32]bool    // tablespaces created or dropped
	local    []localSegment
	// files are the relation files map mode reads in part, by index into
	// the backup's file list; byMTime those the mtime rule takes unread,
	// whose mapped pages are checked to be older than the reference.
	files, byMTime map[int]*fileReads

	mapped, oldMapped, sampled atomic.Int64
	// splitBlocks counts blocks stored as composites of their changed
	// pages; unmappedNew pages in blocks read whose LSN is inside the
	// range but which the maps did not name (stored, and a warning).
	splitBlocks, unmappedNew atomic.Int64

	// audit (--type checksum): pages that changed in the range outside
	// the map.
	mu       sync.Mutex
	misses   int64
	examples []string
}

// localSegment is a segment at the end of the range read from pg_wal
// because it was not archived with a map yet: its bytes before the
// backup's start must equal the archived segment's (checked at commit).
type localSegment struct {
	wf   pg.WALFile
	size int64 // bytes before the backup's start
	sum  [32]byte
}

// fileReads is map mode's decision for one relation file.
type fileReads struct {
	rel   string
	first uint32 // block number of the file's first page
	pages int64  // pages in the live file
	bs    int64  // stored block size (the reference's cut)
	run   int64  // blocks per job
	small int64  // the manifest's small block size (0: whole blocks)
	// read is per stored block: read it from the file (else the
	// reference's block stands for it).
	read []bool
	// mapped are the file's pages (local numbers, sorted) the map names;
	// pages at or above explainFrom are new or re-extended since the
	// reference (a limit, or past the reference's length).
	mapped      []uint32
	explainFrom int64
}

// file is map mode's decision for file i, nil when the file goes by the
// hash rule.
func (p *mapPlan) file(i int) *fileReads {
	if p == nil {
		return nil
	}
	return p.files[i]
}

// newMapPlan indexes merged map m of [from, to).
func newMapPlan(m *walmap.Map, from, to pg.LSN) *mapPlan {
	p := &mapPlan{m: m, from: from, to: to, dbEvent: map[[2]uint32]bool{}, spcEvent: map[uint32]bool{}, files: map[int]*fileReads{}, byMTime: map[int]*fileReads{}}
	for _, e := range m.Events {
		switch e.Kind {
		case walmap.EventTablespaceCreate, walmap.EventTablespaceDrop:
			p.spcEvent[e.Spc] = true
		default:
			p.dbEvent[[2]uint32{e.Spc, e.DB}] = true
		}
	}
	return p
}

// decide says which stored blocks of the file at rel (size bytes now, rf
// in the reference, whose blocks are refBS bytes) map mode reads, cut into
// blocks of bs (run per job, small as the manifest records it). nil and
// the reason when the file goes by the hash rule instead: not a relation
// file, not a main fork, new, under a database-level event, created or
// dropped in the range, or cut differently from the reference.
func (p *mapPlan) decide(rel string, size int64, rf *repo.File, refBS, bs, run, small int64) (*fileReads, string) {
	k, first, ok := relFile(rel)
	switch {
	case !ok:
		return nil, "not a relation file"
	case k.Fork != walmap.ForkMain:
		// FSM is not WAL-logged, VM bits are cleared without a block
		// reference to the VM page: read whole.
		return nil, "fsm, vm or init fork"
	case rf == nil:
		return nil, "new file"
	case p.spcEvent[k.Spc] || p.dbEvent[[2]uint32{k.Spc, k.DB}]:
		return nil, "database or tablespace created or dropped in the range"
	case bs != refBS || (small > 0) != (rf.BlockSize > 0):
		return nil, "cut into other blocks than the reference"
	case size%pg.BlockSize != 0 || rf.Size%pg.BlockSize != 0:
		return nil, "not whole pages"
	}
	pages, refPages := size/pg.BlockSize, rf.Size/pg.BlockSize
	explain := refPages
	fk := p.m.Fork(k)
	if fk != nil && fk.Limit != walmap.NoLimit {
		if fk.Limit <= first {
			return nil, "created, dropped or truncated below this file in the range"
		}
		explain = min(explain, int64(fk.Limit-first))
	}
	if explain == 0 {
		return nil, "empty in the reference"
	}
	n := int((size + bs - 1) / bs)
	fr := &fileReads{rel: rel, first: first, pages: pages, bs: bs, run: run, small: small, read: make([]bool, n), explainFrom: explain}
	ppb := bs / pg.BlockSize
	if fk != nil {
		for _, b := range fk.Blocks {
			if b < first {
				continue
			}
			local := int64(b - first)
			if local >= pages {
				break
			}
			fr.read[local/ppb] = true
			fr.mapped = append(fr.mapped, uint32(local))
		}
	}
	for pg0 := explain; pg0 < pages; pg0 += ppb - pg0%ppb {
		fr.read[pg0/ppb] = true
	}
	for i := range fr.read {
		off := int64(i) * bs
		if i >= len(rf.Blocks) {
			fr.read[i] = true
			continue
		}
		ref := &rf.Blocks[i]
		if ref.FileOffset != off || ref.Size != min(bs, size-off) || !ref.HasDigest() && !ref.Composite() {
			fr.read[i] = true
		}
	}
	return fr, ""
}

// reads is how many bytes of the file fr makes map mode read.
func (fr *fileReads) reads(size int64) int64 {
	var n int64
	for i, r := range fr.read {
		if r {
			off := int64(i) * fr.bs
			n += min(fr.bs, size-off)
		}
	}
	return n
}

// planCapture decides, once the reference is loaded, how this backup
// finds what changed: map mode for --type incr when block maps cover the
// range, else hash mode with the reason recorded; a checksum backup
// audits the maps when they cover the range. A contradiction between the
// maps and a file taken unread by its mtime is an error, as the LSN
// cross-check's is.
func planCapture(ctx context.Context, r *repo.Repository, c *copier, typ string, run backupRun, files []sourceFile, log *slog.Logger) error {
	if c.ref == nil {
		return nil
	}
	c.capture = &repo.ChangeCapture{Mode: CaptureHash}
	wantedMap := c.o.Type != TypeChecksum
	t0 := time.Now()
	p, why := buildMapPlan(ctx, r, c.ref, run)
	if why == "" {
		c.capture.MapFrom, c.capture.MapTo = p.from.String(), p.to.String()
		p.decideFiles(c, files, typ == TypeChecksum)
	}
	if why == "" && typ == TypeIncr {
		var err error
		if why, err = p.crossCheck(c, files); err != nil {
			return err
		}
	}
	switch {
	case why != "" && typ == TypeChecksum:
		c.capture.Audit = "not possible: " + why
		if wantedMap {
			c.capture.Fallback = why
		}
		log.Info("block maps cannot be audited by this checksum backup", "reason", why)
	case why != "":
		c.capture.Fallback = why
		if strings.HasPrefix(why, "check ") {
			log.Warn("block maps failed a cross-check: the whole backup runs in hash mode (reads every changed file)", "reason", why)
		} else {
			log.Info("block maps not used: reading every changed file (hash mode)", "reason", why)
		}
		c.capture.MappedPages, c.capture.OldMappedPages, c.capture.SampledPages = 0, 0, 0
		if p != nil {
			c.capture.SampledPages = p.sampled.Load()
		}
	case typ == TypeChecksum:
		c.audit = p
		if wantedMap {
			c.capture.Fallback = "incr became checksum (the clock is behind the reference's start)"
		}
	default:
		c.plan = p
		c.capture.Mode = CaptureMap
		c.capture.MappedPages, c.capture.OldMappedPages, c.capture.SampledPages = p.mapped.Load(), p.oldMapped.Load(), p.sampled.Load()
		var read, size int64
		for i, fr := range p.files {
			read += fr.reads(files[i].Size)
			size += files[i].Size
		}
		log.Info("map mode: relation files read only where the WAL block maps say they changed", "from", p.from, "to", p.to,
			"files", len(p.files), "their_bytes", size, "bytes_to_read", read, "mapped_pages", c.capture.MappedPages,
			"old_mapped_pages", c.capture.OldMappedPages, "sampled_pages", c.capture.SampledPages, "plan_ms", time.Since(t0).Milliseconds())
	}
	return nil
}

// buildMapPlan merges the block maps of [reference start, backup start)
// along the backup's timeline, or says why they cannot be used.
func buildMapPlan(ctx context.Context, r *repo.Repository, ref *repo.Manifest, run backupRun) (*mapPlan, string) {
	si := run.server
	from, err := pg.ParseLSN(ref.StartLSN)
	to := run.startLSN
	switch {
	case err != nil || from == 0:
		return nil, fmt.Sprintf("the reference's start LSN %q is unknown", ref.StartLSN)
	case to <= from:
		return nil, fmt.Sprintf("the reference starts at %s, not before this backup's %s", from, to)
	case run.timeline == 0 || ref.Timeline != run.timeline:
		return nil, fmt.Sprintf("timeline mismatch: the reference is on timeline %d, this backup on %d", ref.Timeline, run.timeline)
	case ref.SystemIdentifier != fmt.Sprint(si.SystemID) || ref.PGVersion/10000 != si.Version/10000 ||
		ref.DataChecksums != si.Checksums || ref.SegmentSize != si.SegmentSize:
		return nil, fmt.Sprintf("the reference is of another system, PostgreSQL major, data_checksums setting or WAL segment size (%s %d %v %d; now %d %d %v %d)",
			ref.SystemIdentifier, ref.PGVersion, ref.DataChecksums, ref.SegmentSize, si.SystemID, si.Version, si.Checksums, si.SegmentSize)
	}
	history, err := r.TimelineHistory(ctx, run.timeline)
	if err != nil {
		return nil, fmt.Sprintf("timeline %d's history: %v", run.timeline, err)
	}
	path := repo.WALPath{Timeline: run.timeline, History: history, SegmentSize: si.SegmentSize}
	local, lm, why := readLocalSegments(ctx, r, path, from, to, run.pgdata)
	if why != "" {
		return nil, why
	}
	path.Local = lm
	m, err := r.WALMapsCovering(ctx, path, from, to)
	if err != nil {
		return nil, err.Error()
	}
	if m.SystemID != si.SystemID {
		return nil, fmt.Sprintf("the block maps are of system %d", m.SystemID)
	}
	p := newMapPlan(m, from, to)
	p.local = local
	return p, ""
}

// maxLocalSegments bounds how many segments at the end of the range map
// mode reads from pg_wal; mapGrace is how long it waits for the map of a
// segment just archived.
const (
	maxLocalSegments = 64
	mapGrace         = 3 * time.Second
)

// readLocalSegments builds the maps of the segments of the range that are
// not archived yet, from pg_wal: the one holding the backup's start
// (pg_backup_start switched to it; the archiver has it only after the
// backup's end), and those the archiver is still on. wal-push pushes
// ahead, so an archived segment may follow one that is not: every
// segment of the range is looked up (one listing), and those missing
// within the last maxLocalSegments are read. Their bytes up to the start
// are flushed (the checkpoint record behind them is), and checkLocal
// compares them with the archived ones at commit.
func readLocalSegments(ctx context.Context, r *repo.Repository, path repo.WALPath, from, to pg.LSN, pgdata string) ([]localSegment, []*walmap.Map, string) {
	seg := uint64(path.SegmentSize)
	state, err := r.WALArchived(ctx, path, from, to)
	if err != nil {
		return nil, nil, err.Error()
	}
	var locals []localSegment
	var maps []*walmap.Map
	var noMap []pg.WALFile // archived, map not stored (yet)
	anyMap := false
	for i := len(state) - 1; i >= 0; i-- {
		s := state[i]
		anyMap = anyMap || s.HasMap
		newest := len(state)-1-i < maxLocalSegments
		if s.Archived {
			if !s.HasMap && newest {
				noMap = append(noMap, s.File)
			}
			continue
		}
		if !newest {
			return nil, nil, fmt.Sprintf("segment %s is not archived yet, more than %d segments before %s", s.File.Name, maxLocalSegments, to)
		}
		data, err := os.ReadFile(filepath.Join(pgdata, "pg_wal", s.File.Name))
		if err != nil {
			return nil, nil, fmt.Sprintf("segment %s is not archived with a block map yet and pg_wal's copy cannot be read: %v", s.File.Name, err)
		}
		if int64(len(data)) != path.SegmentSize {
			return nil, nil, fmt.Sprintf("pg_wal/%s has %d bytes, not %d", s.File.Name, len(data), path.SegmentSize)
		}
		m, err := walmap.Build(data, s.File.Name, uint32(seg))
		if err != nil {
			return nil, nil, fmt.Sprintf("block map of pg_wal/%s: %v", s.File.Name, err)
		}
		n := s.File.SegNo(path.SegmentSize)
		size := min(int64(uint64(to)-n*seg), path.SegmentSize)
		locals = append(locals, localSegment{wf: s.File, size: size, sum: sha256.Sum256(data[:size])})
		maps = append(maps, m)
	}
	// wal-push stores a segment's map beside the segment: give pushes
	// under way a moment (only when maps are being stored at all). A
	// segment archived without a map is not mapped from pg_wal
	// (WALMapsCovering says why).
	if anyMap {
		deadline := time.Now().Add(mapGrace)
		for _, wf := range noMap {
			for {
				ok, err := r.HasWALMap(ctx, wf)
				if err != nil {
					return nil, nil, fmt.Sprintf("segment %s: %v", wf.Name, err)
				}
				if ok || !time.Now().Before(deadline) {
					break
				}
				select {
				case <-ctx.Done():
					return nil, nil, ctx.Err().Error()
				case <-time.After(100 * time.Millisecond):
				}
			}
		}
	}
	return locals, maps, ""
}

// localWait bounds checkLocal's wait for a segment to be archived.
var localWait = 2 * time.Minute

// checkLocal makes sure the segments the plan read from pg_wal are, up to
// the backup's start, the ones archived since (waiting a while for any
// the archiver is still on): else the map the backup used was of other
// WAL, and the backup must not be committed.
func (p *mapPlan) checkLocal(ctx context.Context, r *repo.Repository) error {
	if p == nil {
		return nil
	}
	for _, l := range p.local {
		deadline := time.Now().Add(localWait)
		for {
			ok, err := r.HasWAL(ctx, l.wf)
			if err != nil {
				return fmt.Errorf("map mode: archived %s: %w", l.wf.Name, err)
			}
			if ok {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("map mode: %s, whose block map the backup built from pg_wal, is not archived after %s", l.wf.Name, localWait)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
		w, err := r.FetchWAL(ctx, l.wf)
		if err != nil {
			return fmt.Errorf("map mode: archived %s: %w", l.wf.Name, err)
		}
		ps := &prefixSum{want: l.size, h: sha256.New()}
		_, err = w.Decode(ps)
		w.Close()
		if err != nil {
			return fmt.Errorf("map mode: archived %s: %w", l.wf.Name, err)
		}
		if ps.n < l.size || !bytes.Equal(ps.h.Sum(nil), l.sum[:]) {
			return fmt.Errorf("map mode: the first %d bytes of the archived %s differ from pg_wal's copy the block map was built from; run the backup again", l.size, l.wf.Name)
		}
	}
	return nil
}

// prefixSum hashes the first want bytes written to it and counts them all:
// checkLocal compares only the part of a segment the map was built from,
// and a 16 MiB buffer per segment cost more than the decode.
type prefixSum struct {
	want, n int64
	h       hash.Hash
}

func (p *prefixSum) Write(b []byte) (int, error) {
	if k := min(int64(len(b)), p.want-p.n); k > 0 {
		p.h.Write(b[:k])
	}
	p.n += int64(len(b))
	return len(b), nil
}

// decideFiles makes the per-file decisions (for every relation file when
// auditing). A file an incremental takes unread by its size and mtime
// whose mapped pages are newer than the reference's start means mtimes
// lie here: crossCheck reports that like the LSN cross-check's finding.
func (p *mapPlan) decideFiles(c *copier, files []sourceFile, audit bool) {
	for i := range files {
		f := &files[i]
		rf := c.refFiles[f.Rel]
		if rf == nil {
			continue
		}
		refBS := rf.BlockSize
		if refBS == 0 {
			refBS = c.ref.BlockSize
		}
		bs, run, small := fileCut(f.Size, rf, c.o)
		fr, _ := p.decide(f.Rel, f.Size, rf, refBS, bs, run, small)
		if fr == nil {
			continue
		}
		if !audit && c.takeUnread(f, rf) {
			// The mtime rule takes it unread; the map is a second witness,
			// checked by crossCheck.
			p.byMTime[i] = fr
			continue
		}
		p.files[i] = fr
	}
}

// crossCheck runs checks A and B before anything is read: every page the
// map names in a file to be read must be newer than the map's start (or
// explained: new, or at or above the file's limit or the reference's
// length), and a sample of the pages to be taken from the reference must
// be older than the reference's start. The first failure, as a reason to
// run in hash mode; an error when a file taken unread by mtime holds a
// mapped page newer than the reference's start.
func (p *mapPlan) crossCheck(c *copier, files []sourceFile) (string, error) {
	for i, fr := range p.byMTime {
		if _, err := p.checkFile(c, &files[i], fr, true); err != nil {
			return "", err
		}
	}
	var failed string
	for i, fr := range p.files {
		why, err := p.checkFile(c, &files[i], fr, false)
		if err != nil {
			return "", err
		}
		if why != "" && failed == "" {
			failed = why
		}
	}
	return failed, nil
}

// checkASample bounds the mapped pages of one file whose headers check A
// reads.
const checkASample = 2048

// checkFile runs the cross-checks on one file.
func (p *mapPlan) checkFile(c *copier, f *sourceFile, fr *fileReads, byMTime bool) (string, error) {
	fh, err := os.Open(f.Abs)
	if os.IsNotExist(err) {
		return "", nil // dropped meanwhile; WAL replay removes it
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", f.Rel, err)
	}
	defer fh.Close()
	var hdr [24]byte
	lsnAt := func(page int64) (pg.LSN, bool, error) {
		n, err := fh.ReadAt(hdr[:], page*pg.BlockSize)
		if n < len(hdr) {
			if err == nil || err == io.EOF {
				return 0, false, nil // shrunk meanwhile
			}
			return 0, false, fmt.Errorf("read %s: %w", f.Rel, err)
		}
		if pg.IsNewPage(hdr[:]) {
			return 0, false, nil
		}
		return pg.ParsePageHeader(hdr[:]).LSN, true, nil
	}
	if byMTime {
		// Only a page written after the reference read the file (LSN past
		// its stop) and before this backup looked at it (LSN before this
		// start) contradicts the mtime: a standby's reference starts at
		// its last restartpoint, and pages with later LSNs were often on
		// disk already when it read them (crossCheckLSN has the argument).
		if c.refStopLSN == 0 || c.refStopLSN >= p.to {
			return "", nil
		}
		for _, page := range fr.mapped {
			lsn, ok, err := lsnAt(int64(page))
			if err != nil {
				return "", err
			}
			if ok && lsn > c.refStopLSN && lsn < p.to {
				return "", fmt.Errorf("%s: block %d has LSN %s, newer than reference backup %s's stop %s, and the WAL block maps name it, but the file's size and mtime say it did not change; mtimes cannot be trusted here: use --type checksum",
					f.Rel, fr.first+page, lsn, c.ref.ID, c.refStopLSN)
			}
		}
		return "", nil
	}
	// Check A: a mapped page older than the map's start was changed by no
	// record of the map: the map's blocks are not this file's.
	// A file with many mapped pages has a spread sample of them checked:
	// the rule is a share, and reading every header cost 0.16 s of CPU
	// before any copying in bench/incr.sh's updates1pct (129k pages).
	var checked, old int64
	stride := max(1, (len(fr.mapped)+checkASample-1)/checkASample) // at most checkASample checked
	for k, page := range fr.mapped {
		if k%stride != 0 || int64(page) >= fr.explainFrom {
			continue
		}
		lsn, ok, err := lsnAt(int64(page))
		if err != nil {
			return "", err
		}
		if !ok {
			continue
		}
		checked++
		if lsn <= p.m.Start {
			old++
		}
	}
	p.mapped.Add(int64(len(fr.mapped)))
	p.oldMapped.Add(old)
	// Without data checksums XLOG_HEAP2_VISIBLE sets no page LSN, so old
	// mapped pages are legal there; with them, many mean a wrong map.
	if c.checksums && old >= 8 && old*5 > checked {
		return fmt.Sprintf("check A: %d of %d pages the block maps name in %s have LSNs before the maps' start %s", old, checked, f.Rel, p.m.Start), nil
	}
	// Check B: unread pages must be older than the reference's start; one
	// in [from, to) is a change the map missed.
	var unread []int64
	ppb := fr.bs / pg.BlockSize
	for b, r := range fr.read {
		if r {
			continue
		}
		for pgn := int64(b) * ppb; pgn < min(int64(b+1)*ppb, fr.pages); pgn++ {
			unread = append(unread, pgn)
		}
	}
	// 64 pages a file (all of a small file's) plus 64 per GiB.
	k := min(len(unread), 64+len(unread)*64/pg.RelSegBlocks)
	for s := 0; s < k; s++ {
		j := s + rand.IntN(len(unread)-s)
		unread[s], unread[j] = unread[j], unread[s]
		page := unread[s]
		lsn, ok, err := lsnAt(page)
		if err != nil {
			return "", err
		}
		p.sampled.Add(1)
		if ok && inRange(lsn, p.from, p.to) {
			return fmt.Sprintf("check B: block %d of %s has LSN %s, inside the range %s..%s, but the block maps do not name it", fr.first+uint32(page), f.Rel, lsn, p.from, p.to), nil
		}
	}
	return "", nil
}

// inRange reports whether a page LSN was set by a record starting in
// [from, to): a page LSN is the end of the record that set it, and from
// and to are backups' redo points, record boundaries, so a record starting
// before from ends at or before it.
func inRange(lsn, from, to pg.LSN) bool { return lsn > from && lsn <= to }

// takeMapped lists file i's blocks: those fr reads as jobs, the others as
// the reference's. It returns the bytes to read. Jobs cover windows of
// fr.run blocks (a chunk's worth), so the changed blocks of a window are
// stored together as one chunk however scattered they are: a sparse window
// reads only its mapped blocks; a dense one (at least half mapped) is read
// whole and in order, its unmapped blocks taken from the reference by
// hash as hash mode does, which costs less than many small reads.
func (c *copier) takeMapped(i int, f *sourceFile, rf *repo.File, fr *fileReads, jobs *[]blockJob) (int64, error) {
	n := len(fr.read)
	c.files[i].BlockSize = fr.small
	c.blocks[i] = make([]repo.BlockRef, n)
	c.foreign[i] = make([]foreignPack, n)
	var read, unread int64
	fromRef := func(b int) error {
		unread += rf.Blocks[b].Size
		return c.takeRefBlock(i, f, rf, b)
	}
	size := func(b int) int64 { return min(int64(b+1)*fr.bs, f.Size) - int64(b)*fr.bs }
	for w := 0; w < n; w += int(fr.run) {
		e := min(n, w+int(fr.run))
		wanted := 0
		for b := w; b < e; b++ {
			if fr.read[b] {
				wanted++
			}
		}
		first, last := w, e-1
		if 2*wanted < e-w {
			for first <= last && !fr.read[first] {
				if err := fromRef(first); err != nil {
					return 0, err
				}
				first++
			}
			for last >= first && !fr.read[last] {
				if err := fromRef(last); err != nil {
					return 0, err
				}
				last--
			}
		}
		if first > last {
			continue
		}
		off := int64(first) * fr.bs
		j := blockJob{file: i, index: first, src: f, off: off, len: min(int64(last+1)*fr.bs, f.Size) - off, bs: fr.bs, rf: rf, fr: fr}
		if 2*wanted < e-w {
			j.want = append([]bool(nil), fr.read[first:last+1]...)
			for b := first; b <= last; b++ {
				if fr.read[b] {
					read += size(b)
				} else if err := fromRef(b); err != nil {
					return 0, err
				}
			}
		} else {
			read += j.len
		}
		*jobs = append(*jobs, j)
	}
	c.stats.unread.Add(unread)
	return read, nil
}

// auditChanged is told of every stored block of a checksum backup that
// differs from the reference's: a page in it with an LSN inside the maps'
// range, in a block map mode would have taken from the reference, is a
// change the maps missed.
func (c *copier) auditChanged(j blockJob, idx int, sub []byte) {
	a := c.audit
	fr := a.file(j.file)
	if fr == nil || idx >= len(fr.read) || fr.read[idx] {
		return
	}
	for p := 0; p+pg.BlockSize <= len(sub); p += pg.BlockSize {
		page := sub[p : p+pg.BlockSize]
		if pg.IsNewPage(page) {
			continue
		}
		lsn := pg.ParsePageHeader(page).LSN
		if !inRange(lsn, a.from, a.to) {
			continue
		}
		blk := fr.first + uint32((j.off+int64(idx-j.index)*j.bs+int64(p))/pg.BlockSize)
		a.mu.Lock()
		a.misses++
		if len(a.examples) < 10 {
			a.examples = append(a.examples, fmt.Sprintf("%s block %d (LSN %s)", j.src.Rel, blk, lsn))
		}
		a.mu.Unlock()
	}
}

// finishCapture completes the backup's change capture record once every
// file is read, and reports an audit's misses.
func (c *copier) finishCapture(log *slog.Logger) *repo.ChangeCapture {
	if p := c.plan; p != nil && c.capture != nil {
		c.capture.SplitBlocks, c.capture.UnmappedNewPages = p.splitBlocks.Load(), p.unmappedNew.Load()
		if n := c.capture.UnmappedNewPages; n > 0 {
			log.Warn("map mode: pages changed inside the range that the block maps do not name were found in blocks read, and stored; the maps may be missing changes elsewhere: run a --type checksum backup to audit them",
				"pages", n, "from", p.from, "to", p.to)
		}
	}
	if c.capture == nil || c.audit == nil {
		return c.capture
	}
	a := c.audit
	a.mu.Lock()
	defer a.mu.Unlock()
	c.capture.AuditMisses, c.capture.AuditExamples = a.misses, a.examples
	if a.misses == 0 {
		c.capture.Audit = "ok"
		log.Info("block map audit: every page that changed in the range is one the maps named", "from", a.from, "to", a.to)
	} else {
		c.capture.Audit = "misses"
		log.Error("block map audit: pages changed in the range that the maps do not name; map-mode backups of this range would have missed them", "from", a.from, "to", a.to,
			"pages", a.misses, "examples", strings.Join(a.examples, "; "))
	}
	return c.capture
}

// mapState is the copier's map mode state.
type mapState struct {
	plan    *mapPlan // map mode: the relation files read in part
	audit   *mapPlan // --type checksum: the maps audited
	capture *repo.ChangeCapture
}

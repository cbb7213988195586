package repo

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strconv"
	"strings"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/storage"
)

// Problem is one thing verify found wrong: with a backup, an object of
// that backup; with an object, that object (WAL); otherwise the
// repository as a whole.
type Problem struct {
	Backup string `json:"backup,omitempty"`
	Object string `json:"object,omitempty"`
	What   string `json:"problem"`
}

// String is the problem as one line, naming what it is about first.
func (p Problem) String() string {
	switch {
	case p.Backup != "":
		return p.Backup + ": " + p.What
	case p.Object != "":
		return p.Object + ": " + p.What
	}
	return p.What
}

// VerifyOptions says what Verify checks and how.
type VerifyOptions struct {
	// BackupIDs are the backups to verify; nil means every committed one.
	BackupIDs []string
	// Cache, when set, spares reading WAL objects an earlier verify read
	// in full and found good, if they are unchanged (see VerifyCache).
	Cache *VerifyCache
	// Concurrency is how many WAL objects are read at once (default 4).
	Concurrency int
	Logger      *slog.Logger
}

// WALStats counts the WAL objects verify checked.
type WALStats struct {
	Objects int // WAL objects in the repository: Read + Cached
	Read    int // read from storage this time
	Cached  int // unchanged since an earlier verify read them in full and found them good
	Bad     int // with a problem (of either kind)
	// Maps counts the block maps and roll-ups beside the WAL, each held to
	// its segments (walmap.Verify); their problems are in Bad too.
	Maps int
}

// VerifyReport is what Verify found.
type VerifyReport struct {
	Backups  []string
	WAL      WALStats
	Problems []Problem
}

// Verify checks the backups (every block decodes to the bytes its
// checksum names; the summary and manifest belong to the backup they are
// stored under), every archived WAL object (decoded in full and, for
// segments, their page header belongs to the repository's system) and the
// continuity of the WAL from each backup's start to the newest archived
// segment. It never changes the repository. An error means the repository
// could not be listed; everything else is a Problem.
func (r *Repository) Verify(ctx context.Context, o VerifyOptions) (VerifyReport, error) {
	var rep VerifyReport
	ids := o.BackupIDs
	if ids == nil {
		var err error
		if ids, err = r.BackupIDs(ctx); err != nil {
			return rep, err
		}
	}
	var sums []Summary
	seen := newVerifySeen()
	for _, id := range ids {
		rep.Backups = append(rep.Backups, id)
		s, err := r.ReadSummary(ctx, id)
		if err != nil {
			rep.Problems = append(rep.Problems, Problem{Backup: id, What: trimBackupPrefix(err, id)})
			continue
		}
		sums = append(sums, s)
		rep.Problems = append(rep.Problems, r.verifyBackup(ctx, id, seen)...)
	}
	a, err := r.ReadWALArchive(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return rep, err
		}
		rep.Problems = append(rep.Problems, Problem{What: err.Error()})
	}
	if a != nil {
		want := walExpect{}
		if id, err := strconv.ParseUint(r.Config.SystemIdentifier, 10, 64); err == nil {
			want.sysid, want.sysidFrom = id, "the repository belongs to"
		}
		for _, s := range sums {
			if id, err := strconv.ParseUint(s.SystemIdentifier, 10, 64); err == nil && want.sysid == 0 {
				want.sysid, want.sysidFrom = id, "backup "+s.ID+" is of"
			}
			if want.segSize == 0 && pg.ValidSegmentSize(s.SegmentSize) {
				want.segSize, want.segSizeFrom = s.SegmentSize, s.ID
			}
		}
		stats, probs, err := r.verifyWAL(ctx, a, want, o)
		if err != nil {
			return rep, err
		}
		rep.WAL = stats
		rep.Problems = append(rep.Problems, probs...)
		for _, s := range sums {
			rep.Problems = append(rep.Problems, a.CheckContinuity(s)...)
		}
	}
	return rep, ctx.Err()
}

// trimBackupPrefix drops a leading "backup ID: " from an error that is
// reported under the backup's ID anyway.
func trimBackupPrefix(err error, id string) string {
	msg := err.Error()
	for _, p := range []string{"backup " + id + ": ", id + ": "} {
		msg = strings.TrimPrefix(msg, p)
	}
	return msg
}

// VerifyBackup re-reads every block of a backup and checks it decodes to
// the bytes its checksum names.
func (r *Repository) VerifyBackup(ctx context.Context, id string) []Problem {
	return r.verifyBackup(ctx, id, newVerifySeen())
}

// verifySeen remembers what one verify run found of each pack and block,
// so a block that several backups reference (format 2) is read once, and
// a bad one is reported for every backup that references it.
type verifySeen struct {
	packs  map[string]string         // pack name -> problem with the pack itself ("" = none)
	blocks map[verifyBlockKey]string // -> problem ("" = good)
}

type verifyBlockKey struct {
	pack   string
	offset int64
	// chunkOffset and size tell apart the blocks of one chunk (format 3).
	chunkOffset, size int64
}

func newVerifySeen() *verifySeen {
	return &verifySeen{packs: map[string]string{}, blocks: map[verifyBlockKey]string{}}
}

func (r *Repository) verifyBackup(ctx context.Context, id string, seen *verifySeen) []Problem {
	var probs []Problem
	add := func(format string, args ...any) {
		probs = append(probs, Problem{Backup: id, What: fmt.Sprintf(format, args...)})
	}
	m, err := r.ReadManifest(ctx, id)
	if err != nil {
		add("%s", trimBackupPrefix(err, id))
		return probs
	}
	type ref struct {
		file string
		b    BlockRef
	}
	byPack := make([][]ref, len(m.Packs))
	for _, f := range m.Files {
		var size int64
		for _, b := range f.Refs() {
			if b.Pack < 0 || b.Pack >= len(m.Packs) {
				add("%s: block refers to pack %d, manifest has %d", f.Path, b.Pack, len(m.Packs))
				continue
			}
			byPack[b.Pack] = append(byPack[b.Pack], ref{f.Path, b})
			size = max(size, b.FileOffset+b.Size)
		}
		if size != f.Size {
			add("%s: blocks cover %d bytes, file has %d", f.Path, size, f.Size)
		}
	}
	for i, p := range m.Packs {
		refs := byPack[i]
		sort.Slice(refs, func(a, b int) bool {
			if refs[a].b.Offset != refs[b].b.Offset {
				return refs[a].b.Offset < refs[b].b.Offset
			}
			return refs[a].b.ChunkOffset < refs[b].b.ChunkOffset
		})
		packProblem, checked := seen.packs[p.Name]
		if !checked {
			info, err := r.backend.Stat(ctx, p.Name)
			switch {
			case err != nil:
				packProblem = fmt.Sprintf("%s: %v", p.Name, err)
			case info.Size != p.Size:
				packProblem = fmt.Sprintf("%s: %d bytes stored, manifest says %d (truncated?)", p.Name, info.Size, p.Size)
			}
			seen.packs[p.Name] = packProblem
		}
		if packProblem != "" {
			add("%s", packProblem)
			if !strings.Contains(packProblem, "truncated") {
				continue
			}
		}
		// Blocks another backup of this run referenced were read then.
		var todo []ref
		for _, x := range refs {
			res, done := seen.blocks[verifyBlockKey{p.Name, x.b.Offset, x.b.ChunkOffset, x.b.Size}]
			switch {
			case !done:
				todo = append(todo, x)
			case res != "":
				add("%s", res)
			}
		}
		if len(todo) == 0 {
			continue
		}
		rc, err := r.backend.Get(ctx, p.Name)
		if err != nil {
			add("%s: %v", p.Name, err)
			continue
		}
		br := bufio.NewReaderSize(rc, 1<<20)
		var pos int64
		// The object last read: blocks of one chunk share it.
		objAt, objRes := int64(-1), ""
		var obj []byte
		for _, x := range todo {
			if x.b.Offset != objAt {
				objAt, objRes, obj = x.b.Offset, "", nil
				if skip := x.b.Offset - pos; skip > 0 {
					io.CopyN(io.Discard, br, skip)
				}
				buf := make([]byte, x.b.Length)
				n, err := io.ReadFull(br, buf)
				pos = x.b.Offset + int64(n)
				if err != nil {
					objRes = fmt.Sprintf("%s: block at %d in %s: %v: missing bytes", x.file, x.b.FileOffset, p.Name, ErrCorrupt)
				} else if obj, _, err = r.codec.DecodeBlock(buf); err != nil {
					objRes = fmt.Sprintf("%s: block at %d in %s: %v", x.file, x.b.FileOffset, p.Name, err)
				}
			}
			res := objRes
			end := x.b.ChunkOffset + x.b.Size
			switch {
			case res != "":
			case end > int64(len(obj)) || m.Format < 3 && end != int64(len(obj)):
				res = fmt.Sprintf("%s: block at %d in %s: %d bytes, manifest says %d at %d", x.file, x.b.FileOffset, p.Name, len(obj), x.b.Size, x.b.ChunkOffset)
			case x.b.HasDigest() && !x.b.DigestIs(obj[x.b.ChunkOffset:end]):
				res = fmt.Sprintf("%s: block at %d in %s: content does not match the manifest's sha256", x.file, x.b.FileOffset, p.Name)
			}
			seen.blocks[verifyBlockKey{p.Name, x.b.Offset, x.b.ChunkOffset, x.b.Size}] = res
			if res != "" {
				add("%s", res)
			}
		}
		rc.Close()
	}
	return probs
}

// WALArchive is what the repository holds of WAL, for continuity checks.
type WALArchive struct {
	objects []walObject
	names   map[string]bool               // segment (and .partial) names
	maps    map[string]storage.ObjectInfo // block maps and roll-ups, by object name
	latest  uint32                        // highest timeline seen
	history []pg.TimelineSwitch
}

// ReadWALArchive lists the archived WAL and reads the latest timeline's
// history file.
func (r *Repository) ReadWALArchive(ctx context.Context) (*WALArchive, error) {
	a := &WALArchive{names: map[string]bool{}, maps: map[string]storage.ObjectInfo{}, latest: 1}
	err := r.backend.List(ctx, "wal/", func(o storage.ObjectInfo) error {
		name := o.Name[strings.LastIndexByte(o.Name, '/')+1:]
		wf, err := pg.ParseWALFileName(name)
		if err != nil {
			if IsWALMapName(name) {
				a.maps[o.Name] = o
			}
			return nil
		}
		if wf.Kind == pg.KindSegment || wf.Kind == pg.KindHistory {
			a.latest = max(a.latest, wf.Timeline)
		}
		a.names[name] = true
		a.objects = append(a.objects, walObject{o, wf})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list WAL: %w", err)
	}
	if a.latest > 1 {
		hist := pg.WALFile{Name: fmt.Sprintf("%08X.history", a.latest), Kind: pg.KindHistory, Timeline: a.latest}
		var buf bytes.Buffer
		if _, err := r.GetObject(ctx, WALObjectName(hist), &buf); err != nil {
			return nil, fmt.Errorf("timeline %d history: %w", a.latest, err)
		}
		if a.history, err = pg.ParseHistory(buf.Bytes()); err != nil {
			return nil, fmt.Errorf("%s: %w", hist.Name, err)
		}
	}
	return a, nil
}

// CheckContinuity reports missing segments between a backup's start and
// the newest segment archived on the latest timeline, following timeline
// switches the way recovery does.
func (a *WALArchive) CheckContinuity(s Summary) []Problem {
	var probs []Problem
	start, err := pg.ParseWALFileName(s.StartWAL)
	if err != nil {
		return []Problem{{Backup: s.ID, What: fmt.Sprintf("bad start segment %q", s.StartWAL)}}
	}
	stop, _ := pg.ParseWALFileName(s.StopWAL)
	size := s.SegmentSize
	target, hist := a.latest, a.history
	if pg.TimelineForSegment(target, hist, start.SegNo(size), size) != s.Timeline {
		// The backup is on a branch the latest timeline does not descend
		// from: only its own range can be checked.
		target, hist = s.Timeline, nil
	}
	// The newest segment on the path to target.
	var newest uint64
	for name := range a.names {
		wf, err := pg.ParseWALFileName(name)
		if err != nil || wf.Kind != pg.KindSegment {
			continue
		}
		if n := wf.SegNo(size); pg.TimelineForSegment(target, hist, n, size) == wf.Timeline && n > newest {
			newest = n
		}
	}
	newest = max(newest, stop.SegNo(size))
	per := uint64(pg.SegmentsPerLog(size))
	var missing []string
	for n := start.SegNo(size); n <= newest; n++ {
		tli := pg.TimelineForSegment(target, hist, n, size)
		name := pg.SegmentName(tli, uint32(n/per), uint32(n%per))
		if !a.names[name] {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		what := fmt.Sprintf("WAL gap: %d segment(s) missing between the backup's start %s and the newest archived segment, first %s",
			len(missing), s.StartWAL, missing[0])
		if len(missing) > 1 {
			what += ", last " + missing[len(missing)-1]
		}
		probs = append(probs, Problem{Backup: s.ID, What: what})
	}
	return probs
}

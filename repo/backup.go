package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/storage"
)

// Backup objects (docs/format.md):
//
//	backups/<id>/started.json    plaintext StartRecord, written at backup start
//	backups/<id>/pack/<NNNNNN>   concatenated blocks
//	backups/<id>/manifest        encoded Manifest (encrypted like data)
//	backups/<id>/backup.json     plaintext Summary, written last: the commit point
//	schedules/<job>/<unix time>  plaintext Summary of the one backup committed
//	                             for a scheduled time (written before backup.json)
const (
	backupsPrefix   = "backups/"
	schedulesPrefix = "schedules/"
)

// ErrBackupNotFound means no committed backup has the requested ID.
var ErrBackupNotFound = errors.New("backup not found")

// Summary is what anyone can read about a backup without a key.
type Summary struct {
	Format           int       `json:"format"`
	ID               string    `json:"id"`
	StartTime        time.Time `json:"start_time"`
	StopTime         time.Time `json:"stop_time"`
	StartLSN         string    `json:"start_lsn"`
	StopLSN          string    `json:"stop_lsn"`
	Timeline         uint32    `json:"timeline"`
	StartWAL         string    `json:"start_wal"`
	StopWAL          string    `json:"stop_wal"`
	SystemIdentifier string    `json:"system_identifier"`
	PGVersion        int       `json:"pg_version"`
	SegmentSize      int64     `json:"wal_segment_size"`
	DataChecksums    bool      `json:"data_checksums"`
	Host             string    `json:"host"`
	// PGData is the data directory's absolute path on Host: an
	// incremental trusts mtimes only against a reference of the same one.
	PGData         string `json:"pgdata,omitempty"`
	Role           string `json:"role"` // primary or standby
	DataSize       int64  `json:"data_size"`
	StoredSize     int64  `json:"stored_size"`
	Files          int    `json:"files"`
	ManifestSHA256 string `json:"manifest_sha256"`
	// Type is full, incr or checksum (format 2; empty means full).
	Type string `json:"type,omitempty"`
	// Reference is the backup whose blocks an incremental reused.
	Reference string `json:"reference,omitempty"`
	// BytesRead is how much of the data directory the backup read (the
	// rest it took unread from the reference); 0 when not recorded.
	BytesRead int64 `json:"bytes_read,omitempty"`
	// Capture says how an incremental found what changed (repo/walmap.go).
	Capture *ChangeCapture `json:"capture,omitempty"`
	// Resumed are the interrupted backups whose stored blocks this backup
	// reused, and BytesResumed how many bytes of blocks that was.
	Resumed      []string `json:"resumed,omitempty"`
	BytesResumed int64    `json:"bytes_resumed,omitempty"`
	// Annotations are the operator's key=value notes (backup --annotation),
	// bounded by ValidateAnnotations.
	Annotations map[string]string `json:"annotations,omitempty"`
	// Schedule is the scheduled time of a job this backup was taken for
	// (pgkeep daemon); nil for backups taken by hand.
	Schedule *Schedule `json:"schedule,omitempty"`
}

// Schedule names one scheduled time of a daemon job.
type Schedule struct {
	Job  string    `json:"job"`
	Time time.Time `json:"time"`
}

func (s Schedule) String() string { return s.Job + "@" + s.Time.UTC().Format(time.RFC3339) }

// ErrScheduleTaken means another backup is already committed for the
// scheduled time a backup was taken for.
var ErrScheduleTaken = errors.New("another backup is already committed for this scheduled time")

func scheduleName(s Schedule) (string, error) {
	if s.Job == "" || strings.ContainsAny(s.Job, "/\\ ") || strings.Contains(s.Job, "..") || s.Time.IsZero() {
		return "", fmt.Errorf("schedule %q: job name must be non-empty without '/', '\\', '..' or spaces, and the time set", s.String())
	}
	return fmt.Sprintf("%s%s/%d", schedulesPrefix, s.Job, s.Time.Unix()), nil
}

// Manifest is everything restore needs about a backup.
type Manifest struct {
	Summary
	BackupLabel   string       `json:"backup_label"`
	TablespaceMap string       `json:"tablespace_map,omitempty"`
	Tablespaces   []Tablespace `json:"tablespaces,omitempty"`
	// BlockSize is the plain size of every block but a file's last; file
	// checksums are computed over blocks of this size.
	BlockSize int64  `json:"block_size"`
	Packs     []Pack `json:"packs"`
	// Maps (format 4) are the file map objects the files name, with their
	// sizes; Packs still lists every pack the maps name.
	Maps []Pack `json:"maps,omitempty"`
	// InlineBlocks makes CommitBackup keep every block list in the
	// manifest, writing no file map (as pgkeep did before format 4).
	InlineBlocks bool   `json:"-"`
	Dirs         []Dir  `json:"dirs"`
	Files        []File `json:"files"`
}

// Tablespace is a pg_tblspc/<OID> symlink and where it pointed.
type Tablespace struct {
	OID      string `json:"oid"`
	Location string `json:"location"`
}

// Pack is one object of concatenated blocks.
type Pack struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

// Dir is a directory to create (relative slash path).
type Dir struct {
	Path string `json:"path"`
	Mode uint32 `json:"mode"`
}

// File is one data-directory file: its blocks in order.
type File struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	Mode   uint32 `json:"mode"`
	SHA256 string `json:"sha256"`
	// MTime is the file's modification time in Unix nanoseconds when it
	// was read (0 in manifests written before incrementals).
	MTime int64 `json:"mtime,omitempty"`
	// BlockSize (format 3) is the size of every block of this file but the
	// last, when the file is cut into small blocks; 0 means the manifest's
	// block_size. The file checksum is computed over blocks of this size.
	BlockSize int64      `json:"block_size,omitempty"`
	Blocks    []BlockRef `json:"blocks,omitempty"`
	// Map (format 4) names the file map holding Blocks; the stored
	// manifest then has no blocks for the file (ReadManifest fills them).
	Map *MapRef `json:"map,omitempty"`
	// MapChain is, once the manifest is read or committed, the map
	// objects Map is resolved from (its own first, then a patch's bases'),
	// and MapDepth how many patches deep Map is (0: a full list).
	MapChain []string `json:"-"`
	MapDepth int      `json:"-"`
	// Base, when set before the commit, is the reference's map of this
	// file, which its new map may patch (format 5).
	Base *MapBase `json:"-"`
}

// FileBlockSize is the size f's blocks are cut to (its checksum's).
func (m *Manifest) FileBlockSize(f *File) int64 {
	if f.BlockSize > 0 {
		return f.BlockSize
	}
	return m.BlockSize
}

// BlockRef locates one block: bytes [Offset, Offset+Length) of pack Pack
// hold the object for plain bytes [FileOffset, FileOffset+Size) of a file.
type BlockRef struct {
	Pack       int   `json:"pack"`
	Offset     int64 `json:"offset"`
	Length     int64 `json:"length"`
	FileOffset int64 `json:"file_offset"`
	Size       int64 `json:"size"`
	// ChunkOffset (format 3) is where the block starts in the object's
	// plain content: a chunk holds several small blocks, compressed and
	// encrypted together. Before format 3 an object is exactly one block.
	ChunkOffset int64 `json:"chunk_offset,omitempty"`
	// Sum is the hash of the block's plain content, of the kind Hash
	// says (none in manifests written before incrementals): a later
	// backup compares the block at the same offset against it. SHA-256
	// fills it; xxh3-128 (format 3, the blocks of a file with small
	// blocks) its first 16 bytes. Held as bytes, not hex, so a block list
	// is one allocation the garbage collector need not look into; JSON
	// spells it as the "sha256" or "xxh3" hex field (blockhash.go).
	Sum  [32]byte `json:"-"`
	Hash HashKind `json:"-"`
	// Parts (format 7), when set, make this a composite block
	// (composite.go): its content is theirs, in order, and the block has
	// no object or hash of its own.
	Parts []BlockRef `json:"parts,omitempty"`
}

// storesBlocks reports whether m names blocks stored by this code: packs
// of its own, or of the interrupted backups it resumed.
func (m *Manifest) storesBlocks() bool {
	if len(m.Resumed) > 0 {
		return true
	}
	for _, p := range m.Packs {
		if strings.HasPrefix(p.Name, BackupPrefix(m.ID)) {
			return true
		}
	}
	return false
}

// NewBackupID makes a sortable, unique-enough ID from the start time.
func NewBackupID(t time.Time, suffix string) string {
	return t.UTC().Format("20060102T150405Z") + "-" + suffix
}

// BackupPrefix is the object-name prefix of a backup.
func BackupPrefix(id string) string { return backupsPrefix + id + "/" }

// PackName is the object name of pack n of backup id.
func PackName(id string, n int) string { return fmt.Sprintf("%spack/%06d", BackupPrefix(id), n) }

func manifestName(id string) string { return BackupPrefix(id) + "manifest" }
func startedName(id string) string  { return BackupPrefix(id) + "started.json" }

// StartRecord marks a running backup and the oldest WAL it will need, so a
// concurrent delete keeps that WAL (docs/format.md, "Retention").
type StartRecord struct {
	StartLSN    string    `json:"start_lsn"`
	SegmentSize int64     `json:"wal_segment_size"`
	Time        time.Time `json:"time"`
	// Reference is the committed backup whose packs this backup may reuse,
	// named before its manifest is read: a concurrent delete keeps what it
	// references (docs/format.md, "Retention by reference").
	Reference string `json:"reference,omitempty"`
	// SystemIdentifier is the system the backup is of: only a backup of
	// the same system resumes it.
	SystemIdentifier string `json:"system_identifier,omitempty"`
	// Resume names the interrupted backups whose packs this backup may
	// reuse (docs/format.md "Resume"), named before their indexes are
	// read: a concurrent delete of one keeps its packs.
	Resume []string `json:"resume,omitempty"`
}

// MarkBackupStarted writes backup id's start record.
func (r *Repository) MarkBackupStarted(ctx context.Context, id string, rec StartRecord) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := r.backend.Put(ctx, startedName(id), bytes.NewReader(data), storage.PutOptions{IfAbsent: true}); err != nil {
		return fmt.Errorf("write start record: %w", err)
	}
	return nil
}

// ReadStartRecord reads backup id's start record (storage.ErrNotFound for
// backups written before it existed).
func (r *Repository) ReadStartRecord(ctx context.Context, id string) (StartRecord, error) {
	var rec StartRecord
	if err := ValidBackupID(id); err != nil {
		return rec, err
	}
	rc, err := r.backend.Get(ctx, startedName(id))
	if err != nil {
		return rec, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, 1<<16))
	if err != nil {
		return rec, fmt.Errorf("backup %s: start record: %w", id, err)
	}
	if rec, err = parseStartRecord(data); err != nil {
		return rec, fmt.Errorf("backup %s: start record: %w", id, err)
	}
	return rec, nil
}

// parseStartRecord parses a started.json.
func parseStartRecord(data []byte) (StartRecord, error) {
	var rec StartRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return rec, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if _, err := pg.ParseLSN(rec.StartLSN); err != nil {
		return rec, fmt.Errorf("%w: start_lsn: %v", ErrCorrupt, err)
	}
	if !pg.ValidSegmentSize(rec.SegmentSize) {
		return rec, fmt.Errorf("%w: wal_segment_size %d", ErrCorrupt, rec.SegmentSize)
	}
	return rec, nil
}
func summaryName(id string) string { return BackupPrefix(id) + "backup.json" }

// ValidBackupID rejects IDs that could escape the backups/ prefix.
func ValidBackupID(id string) error {
	if id == "" || strings.ContainsAny(id, "/\\") || strings.Contains(id, "..") {
		return fmt.Errorf("%q is not a backup ID", id)
	}
	return nil
}

// CommitBackup writes the manifest, then the summary that makes the backup
// visible. A crash before the summary leaves invisible debris.
//
// The summary's manifest_sha256 is the SHA-256 of the manifest object's
// plain content exactly as stored; in that content the field itself is
// empty (a hash cannot contain itself).
// A backup taken for a scheduled time (m.Schedule set) first claims the
// time: schedules/<job>/<unix time> is created, if absent, with the
// summary. Storage's create-if-absent lets one backup claim a time, so at
// most one backup is ever committed for it, whatever etcd's locks say
// (a holder that lost its lock, a daemon on a stale etcd). A backup that
// finds the time claimed by another fails with ErrScheduleTaken and stays
// uncommitted debris. A claim whose backup.json is missing (a crash
// between the two writes) is completed by FindScheduled.
func (r *Repository) CommitBackup(ctx context.Context, m *Manifest) error {
	if err := r.PrepareCommit(ctx, m); err != nil {
		return err
	}
	return r.PublishBackup(ctx, m)
}

// PrepareCommit is CommitBackup's first half: the file maps, the
// repository format, the references and the manifest, none of which makes
// the backup visible. A backup writes them while it waits for its WAL.
func (r *Repository) PrepareCommit(ctx context.Context, m *Manifest) error {
	if err := r.writeMaps(ctx, m); err != nil {
		return err
	}
	foreign := m.foreignPacks()
	foreignMaps := m.foreignMaps()
	m.Summary.Format = 1
	if m.usesChunks() {
		// Readers of format 2 would take a chunk for one block.
		m.Summary.Format = 3
	}
	if m.usesMaps() {
		// Readers of format 3 would find no blocks.
		m.Summary.Format = 4
	}
	if m.usesPatches() {
		// Readers of format 4 know no patches.
		m.Summary.Format = 5
	}
	if m.usesMaps() {
		// Readers of format 5 know no binary maps, which this code
		// writes (and a manifest naming maps may name its reference's).
		m.Summary.Format = 6
	}
	if m.usesComposites() {
		// Readers of format 6 know no composite blocks.
		m.Summary.Format = 7
	}
	shares := len(foreign) > 0 || len(foreignMaps) > 0
	if shares {
		// Readers of format 1 would delete packs this backup needs.
		m.Summary.Format = max(m.Summary.Format, 2)
	}
	// The repository's format says what its manifests may hold: pgkeeps of
	// format 1 do not check a manifest's format, and would restore a chunk
	// as one block or a file without blocks as empty; pgkeeps of format 2
	// would delete file maps other backups name.
	to := 0
	switch {
	case m.Summary.Format >= 7:
		// pgkeeps of repository format 5 would call a composite block's
		// map entry corrupt, and their repack would not move its parts.
		to = 6
	case m.Summary.Format >= 6 || m.storesBlocks():
		// pgkeeps of repository format 4 would call binary maps corrupt,
		// and refuse the xxh3-128 sum in the header of every block this
		// code stores (flagXXH3).
		to = 5
	case m.Summary.Format >= 3:
		to = 3
	case m.Summary.Format == 2:
		to = 2
	}
	if to > 0 {
		if err := r.upgradeFormat(ctx, to); err != nil {
			return err
		}
	}
	if shares {
		if err := r.putRefs(ctx, m.ID, Refs{Packs: foreign, Maps: foreignMaps}); err != nil {
			return err
		}
	}
	m.Summary.Files = len(m.Files)
	m.Summary.ManifestSHA256 = ""
	if err := ValidateAnnotations(m.Annotations); err != nil {
		return err
	}
	data, err := json.Marshal(m.storedForm())
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	if err := r.checkPacks(ctx, m); err != nil {
		return err
	}
	if err := r.PutObject(ctx, manifestName(m.ID), data, storage.PutOptions{IfAbsent: true}); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	m.Summary.ManifestSHA256 = hex.EncodeToString(sum[:])
	info, err := r.backend.Stat(ctx, manifestName(m.ID))
	if err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	m.Summary.StoredSize += info.Size
	return nil
}

// PublishBackup is CommitBackup's second half, after PrepareCommit: the
// schedule's claim and the summary, the commit point.
func (r *Repository) PublishBackup(ctx context.Context, m *Manifest) error {
	if m.Summary.ManifestSHA256 == "" {
		return fmt.Errorf("publish backup %s: its manifest is not written", m.ID)
	}
	sdata, err := json.MarshalIndent(m.Summary, "", "  ")
	if err != nil {
		return err
	}
	if m.Schedule != nil {
		if err := r.claimSchedule(ctx, *m.Schedule, m.ID, sdata); err != nil {
			return err
		}
	}
	if err := r.backend.Put(ctx, summaryName(m.ID), bytes.NewReader(sdata), storage.PutOptions{IfAbsent: true}); err != nil {
		// FindScheduled may have completed a claimed backup already.
		if !(m.Schedule != nil && errors.Is(err, storage.ErrExists)) {
			return fmt.Errorf("write backup summary: %w", err)
		}
	}
	// A delete that removed packs between the check and the summary must
	// not leave a visible backup behind: take it back, summary first, then
	// its claim (FindScheduled would complete a claim whose manifest exists).
	if err := r.checkPacks(ctx, m); err != nil {
		dctx := context.WithoutCancel(ctx)
		derr := r.backend.Delete(dctx, summaryName(m.ID))
		if derr == nil && m.Schedule != nil {
			if name, nerr := scheduleName(*m.Schedule); nerr == nil {
				derr = r.backend.Delete(dctx, name)
			}
		}
		if derr != nil {
			return fmt.Errorf("%w; and taking its summary back failed: %v (delete backup %s by hand)", err, derr, m.ID)
		}
		return err
	}
	return nil
}

// checkManifestSum reports whether plain is the manifest a summary's
// manifest_sha256 names. Manifests written before that hash covered the
// stored bytes carry the hash of themselves with the field empty; that is
// accepted too (it binds the content just as well).
func checkManifestSum(plain []byte, want string) bool {
	if len(want) != 64 {
		return false
	}
	sum := sha256.Sum256(plain)
	if hex.EncodeToString(sum[:]) == want {
		return true
	}
	field := []byte(`"manifest_sha256":"` + want + `"`)
	if bytes.Count(plain, field) != 1 {
		return false
	}
	sum = sha256.Sum256(bytes.Replace(plain, field, []byte(`"manifest_sha256":""`), 1))
	return hex.EncodeToString(sum[:]) == want
}

// claimSchedule creates the claim of s for backup id (summary sdata); a
// claim that is already this backup's (an earlier try whose answer was
// lost) counts as made.
func (r *Repository) claimSchedule(ctx context.Context, s Schedule, id string, sdata []byte) error {
	name, err := scheduleName(s)
	if err != nil {
		return err
	}
	err = r.backend.Put(ctx, name, bytes.NewReader(sdata), storage.PutOptions{IfAbsent: true})
	if err == nil {
		return nil
	}
	if !errors.Is(err, storage.ErrExists) {
		return fmt.Errorf("claim scheduled time %s: %w", s, err)
	}
	got, err := r.readClaim(ctx, name)
	if err != nil {
		return fmt.Errorf("claim scheduled time %s: %w", s, err)
	}
	if got.ID == id {
		return nil
	}
	return fmt.Errorf("backup %s for %s: %w: %s", id, s, ErrScheduleTaken, got.ID)
}

func (r *Repository) readClaim(ctx context.Context, name string) (Summary, error) {
	var s Summary
	rc, err := r.backend.Get(ctx, name)
	if err != nil {
		return s, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, 1<<20))
	if err != nil {
		return s, fmt.Errorf("read %s: %w", name, err)
	}
	if err := json.Unmarshal(data, &s); err != nil || ValidBackupID(s.ID) != nil {
		return s, fmt.Errorf("%s: not a backup summary: %w", name, ErrCorrupt)
	}
	return s, nil
}

// FindScheduled returns the backup committed for scheduled time s, if
// any: the repository, not etcd, is where a scheduled time's backup is
// known for sure. A claim whose backup.json is missing (the committing
// process died between the two writes) is completed here when the
// backup's manifest is stored; a claim whose backup was deleted since
// (retention) is still returned: the time had its backup.
func (r *Repository) FindScheduled(ctx context.Context, s Schedule) (Summary, bool, error) {
	name, err := scheduleName(s)
	if err != nil {
		return Summary{}, false, err
	}
	sum, err := r.readClaim(ctx, name)
	if errors.Is(err, storage.ErrNotFound) {
		return Summary{}, false, nil
	}
	if err != nil {
		return Summary{}, false, fmt.Errorf("find the backup of %s: %w", s, err)
	}
	if _, err := r.backend.Stat(ctx, summaryName(sum.ID)); errors.Is(err, storage.ErrNotFound) {
		// The manifest is written after every pack and DeleteBackup removes
		// it before any pack ("manifest" sorts before "pack/"), and a
		// commit that finds a pack gone removes its claim: a manifest
		// still there means the packs are too.
		if _, merr := r.backend.Stat(ctx, manifestName(sum.ID)); merr == nil {
			data, _ := json.MarshalIndent(sum, "", "  ")
			perr := r.backend.Put(ctx, summaryName(sum.ID), bytes.NewReader(data), storage.PutOptions{IfAbsent: true})
			if perr != nil && !errors.Is(perr, storage.ErrExists) {
				return Summary{}, false, fmt.Errorf("complete the claimed backup %s of %s: %w", sum.ID, s, perr)
			}
		}
	} else if err != nil {
		return Summary{}, false, fmt.Errorf("find the backup of %s: %w", s, err)
	}
	return sum, true, nil
}

// ListBackups returns the committed backups, oldest first. debris gets the
// IDs that have objects but no summary (failed or running backups).
func (r *Repository) ListBackups(ctx context.Context) (backups []Summary, debris []string, err error) {
	ids, debris, err := r.listBackupIDs(ctx)
	if err != nil {
		return nil, nil, err
	}
	if backups, err = r.readSummaries(ctx, ids); err != nil {
		return nil, nil, err
	}
	return backups, debris, nil
}

// BackupIDs returns the IDs of the committed backups (those with a
// summary), in lexical order, without reading their summaries.
func (r *Repository) BackupIDs(ctx context.Context) ([]string, error) {
	ids, _, err := r.listBackupIDs(ctx)
	return ids, err
}

func (r *Repository) listBackupIDs(ctx context.Context) (committed, debris []string, err error) {
	l, err := r.listBackupObjects(ctx)
	// What is left of a deleted backup whose packs others reference is
	// not a failed backup: only delete deals with it.
	for _, id := range l.debris {
		if !l.retired[id] {
			debris = append(debris, id)
		}
	}
	return l.committed, debris, err
}

// backupListing is one listing of backups/.
type backupListing struct {
	committed, debris []string // sorted IDs
	keep              map[string]bool
	size              map[string]int64 // bytes stored under backups/<id>/
	alive             map[string]storage.ObjectInfo
	// retired are debris holding nothing but packs (and refs.json): what a
	// deleted backup left because other backups still referenced it
	// (format 2).
	retired map[string]bool
	// moved are the relocation objects (backups/<id>/moved/NNNNNN).
	moved []string
}

func (r *Repository) listBackupObjects(ctx context.Context) (backupListing, error) {
	l := backupListing{keep: map[string]bool{}, size: map[string]int64{}, alive: map[string]storage.ObjectInfo{}, retired: map[string]bool{}}
	done := map[string]bool{}
	notPack := map[string]bool{}
	err := r.backend.List(ctx, backupsPrefix, func(o storage.ObjectInfo) error {
		rest := strings.TrimPrefix(o.Name, backupsPrefix)
		id, obj, ok := strings.Cut(rest, "/")
		if !ok {
			return nil
		}
		l.size[id] += o.Size
		if strings.HasPrefix(obj, "moved/") && isMovedName(o.Name) {
			l.moved = append(l.moved, o.Name)
		} else if !strings.HasPrefix(obj, "pack/") && !strings.HasPrefix(obj, "map/") && obj != "refs.json" {
			notPack[id] = true
		}
		switch obj {
		case "backup.json":
			done[id] = true
		case "keep.json":
			l.keep[id] = true
		case "alive":
			l.alive[id] = o
		}
		return nil
	})
	if err != nil {
		return l, fmt.Errorf("list backups: %w", err)
	}
	for id := range l.size {
		if done[id] {
			l.committed = append(l.committed, id)
		} else {
			l.debris = append(l.debris, id)
			l.retired[id] = !notPack[id]
		}
	}
	sort.Strings(l.committed)
	sort.Strings(l.debris)
	return l, nil
}

// summaryReaders bounds the summaries read at once (one request each).
const summaryReaders = 8

// readSummaries reads the summaries of ids, oldest first (SortBackups),
// summaryReaders at a time.
func (r *Repository) readSummaries(ctx context.Context, ids []string) ([]Summary, error) {
	backups := make([]Summary, len(ids))
	errs := make([]error, len(ids))
	forEachIndex(len(ids), summaryReaders, func(i int) {
		backups[i], errs[i] = r.ReadSummary(ctx, ids[i])
	})
	for _, err := range errs {
		if err != nil {
			return nil, err // the first, as one line
		}
	}
	if len(backups) == 0 {
		return nil, nil
	}
	SortBackups(backups)
	return backups, nil
}

// SortBackups orders backups oldest first by WAL position: timeline, then
// start LSN. Clocks are for display: a backup taken while a clock ran fast
// must not outrank a newer one.
func SortBackups(b []Summary) {
	sort.SliceStable(b, func(i, j int) bool {
		if b[i].Timeline != b[j].Timeline {
			return b[i].Timeline < b[j].Timeline
		}
		li, lj := b[i].startPos(), b[j].startPos()
		if li != lj {
			return li < lj
		}
		return b[i].ID < b[j].ID
	})
}

// startPos is the backup's start LSN (from its first segment if the LSN
// does not parse).
func (s Summary) startPos() pg.LSN {
	if l, err := pg.ParseLSN(s.StartLSN); err == nil {
		return l
	}
	if wf, err := pg.ParseWALFileName(s.StartWAL); err == nil && pg.ValidSegmentSize(s.SegmentSize) {
		return pg.LSN(wf.SegNo(s.SegmentSize) * uint64(s.SegmentSize))
	}
	return 0
}

// ReadSummary reads a committed backup's plaintext summary.
func (r *Repository) ReadSummary(ctx context.Context, id string) (Summary, error) {
	var s Summary
	if err := ValidBackupID(id); err != nil {
		return s, err
	}
	rc, err := r.backend.Get(ctx, summaryName(id))
	if errors.Is(err, storage.ErrNotFound) {
		return s, fmt.Errorf("%s: %w", id, ErrBackupNotFound)
	}
	if err != nil {
		return s, fmt.Errorf("read backup %s: %w", id, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, 1<<20))
	if err != nil {
		return s, fmt.Errorf("read backup %s: %w", id, err)
	}
	return parseSummary(id, data)
}

// parseSummary parses the summary stored as backup id's backup.json.
func parseSummary(id string, data []byte) (Summary, error) {
	var s Summary
	if err := json.Unmarshal(data, &s); err != nil {
		return s, fmt.Errorf("backup %s: summary is corrupt: %v", id, err)
	}
	if s.ID != id {
		return s, fmt.Errorf("backup %s: its summary (%s) names backup %q; refusing a swapped or copied backup.json", id, summaryName(id), s.ID)
	}
	return s, nil
}

// ReadManifest reads and checks a committed backup's manifest.
func (r *Repository) ReadManifest(ctx context.Context, id string) (*Manifest, error) {
	s, err := r.ReadSummary(ctx, id)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if _, err := r.GetObject(ctx, manifestName(id), &buf); err != nil {
		return nil, fmt.Errorf("backup %s: manifest: %w", id, err)
	}
	m, err := parseManifest(buf.Bytes(), s)
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", id, err)
	}
	// Blocks of packs that a repack moved are read where they are now.
	t := r.newRelocator()
	if m.usesMaps() {
		if err := r.resolveMaps(ctx, m, t); err != nil {
			return nil, fmt.Errorf("backup %s: %w", id, err)
		}
	}
	if err := r.applyRelocations(ctx, m, t); err != nil {
		return nil, fmt.Errorf("backup %s: %w", id, err)
	}
	if err := m.check(); err != nil {
		return nil, fmt.Errorf("backup %s: manifest: %w: %v", id, ErrCorrupt, err)
	}
	return m, nil
}

// parseManifest parses a manifest's plain content and checks that it is
// the one summary s names and that everything restore will use of it is
// sound: paths stay inside the data directory, blocks name existing packs.
func parseManifest(plain []byte, s Summary) (*Manifest, error) {
	if !checkManifestSum(plain, s.ManifestSHA256) {
		return nil, fmt.Errorf("manifest does not match the summary's manifest_sha256 (%.12s…): it was changed or swapped; refusing to use it", s.ManifestSHA256)
	}
	var m Manifest
	if err := json.Unmarshal(plain, &m); err != nil {
		return nil, fmt.Errorf("manifest: %w: %v", ErrCorrupt, err)
	}
	if err := sameBackup(m.Summary, s); err != nil {
		return nil, fmt.Errorf("manifest does not belong to this backup: %w", err)
	}
	if err := m.check(); err != nil {
		return nil, fmt.Errorf("manifest: %w: %v", ErrCorrupt, err)
	}
	m.Summary.ManifestSHA256 = s.ManifestSHA256
	m.Summary.StoredSize = s.StoredSize
	return &m, nil
}

// check refuses what restore could not use safely.
func (m *Manifest) check() error {
	if len(m.Files) > 0 && (m.BlockSize <= 0 || m.BlockSize > 1<<30) {
		return fmt.Errorf("block_size %d", m.BlockSize)
	}
	if m.Format > 7 {
		return fmt.Errorf("backup format %d is newer than this pgkeep (1..7)", m.Format)
	}
	for _, p := range m.Maps {
		own := strings.HasPrefix(p.Name, BackupPrefix(m.ID)+"map/")
		if m.Format < 4 || !(own || isMapName(p.Name)) || strings.Contains(p.Name, "..") || p.Size < 0 {
			return fmt.Errorf("file map %q is not one this backup can name", p.Name)
		}
	}
	for _, p := range m.Packs {
		own := strings.HasPrefix(p.Name, BackupPrefix(m.ID)+"pack/")
		if !(own || m.Format >= 2 && isPackName(p.Name)) || strings.Contains(p.Name, "..") || p.Size < 0 {
			return fmt.Errorf("pack %q is not one of this backup's", p.Name)
		}
	}
	for _, t := range m.Tablespaces {
		if _, err := strconv.ParseUint(t.OID, 10, 32); err != nil || strings.TrimLeft(t.OID, "0123456789") != "" {
			return fmt.Errorf("tablespace OID %q", t.OID)
		}
	}
	for _, d := range m.Dirs {
		if !localPath(d.Path) {
			return fmt.Errorf("directory %q is not a path inside the data directory", d.Path)
		}
	}
	for _, f := range m.Files {
		if !localPath(f.Path) {
			return fmt.Errorf("file %q is not a path inside the data directory", f.Path)
		}
		if f.Size < 0 || f.BlockSize < 0 || f.BlockSize > m.BlockSize || f.BlockSize > 0 && m.Format < 3 {
			return fmt.Errorf("%s: size %d, block size %d", f.Path, f.Size, f.BlockSize)
		}
		if f.Map != nil && m.Format < 4 {
			return fmt.Errorf("%s: a file map in a format %d manifest", f.Path, m.Format)
		}
		bs := m.FileBlockSize(&f)
		for _, b := range f.Blocks {
			if b.Composite() {
				if err := b.checkComposite(); err != nil || m.Format < 7 || b.FileOffset < 0 || b.Size > bs || b.FileOffset > f.Size || b.Size > f.Size-b.FileOffset {
					return fmt.Errorf("%s: composite block at %d of %d bytes in a format %d manifest: %v", f.Path, b.FileOffset, b.Size, m.Format, err)
				}
			}
		}
		for _, b := range f.Refs() {
			if b.Pack < 0 || b.Pack >= len(m.Packs) || b.Offset < 0 || b.Length <= 0 || b.FileOffset < 0 || b.Size < 0 ||
				b.Size > bs || b.FileOffset > f.Size || b.Size > f.Size-b.FileOffset ||
				b.ChunkOffset < 0 || b.ChunkOffset > 0 && m.Format < 3 {
				return fmt.Errorf("%s: block %+v does not fit the file or the packs", f.Path, b)
			}
		}
	}
	return nil
}

// localPath reports whether p is a clean, relative slash path that stays
// below the directory it is joined to.
func localPath(p string) bool {
	return p != "" && p != "." && path.Clean(p) == p && !strings.HasPrefix(p, "/") &&
		p != ".." && !strings.HasPrefix(p, "../") && !strings.ContainsRune(p, 0) && filepath.IsLocal(filepath.FromSlash(p))
}

// sameBackup checks that a manifest's copy of the summary describes the
// backup the summary does.
func sameBackup(m, s Summary) error {
	for _, f := range []struct{ name, m, s string }{
		{"id", m.ID, s.ID}, {"start_lsn", m.StartLSN, s.StartLSN}, {"stop_lsn", m.StopLSN, s.StopLSN},
		{"start_wal", m.StartWAL, s.StartWAL}, {"stop_wal", m.StopWAL, s.StopWAL},
		{"system_identifier", m.SystemIdentifier, s.SystemIdentifier},
		{"timeline", fmt.Sprint(m.Timeline), fmt.Sprint(s.Timeline)},
		{"wal_segment_size", fmt.Sprint(m.SegmentSize), fmt.Sprint(s.SegmentSize)},
	} {
		if f.m != f.s {
			return fmt.Errorf("%s is %q in the manifest, %q in the summary", f.name, f.m, f.s)
		}
	}
	return nil
}

// DeleteBackup removes the summary first (the backup stops being visible),
// then its scheduled time's claim if it holds one, then every other object
// of the backup.
func (r *Repository) DeleteBackup(ctx context.Context, id string) error {
	if err := ValidBackupID(id); err != nil {
		return err
	}
	sum, serr := r.ReadSummary(ctx, id)
	if err := r.backend.Delete(ctx, summaryName(id)); err != nil {
		return fmt.Errorf("delete backup %s: %w", id, err)
	}
	if serr == nil && sum.Schedule != nil {
		if name, err := scheduleName(*sum.Schedule); err == nil {
			if c, err := r.readClaim(ctx, name); err == nil && c.ID == id {
				if err := r.backend.Delete(ctx, name); err != nil {
					return fmt.Errorf("delete backup %s: %w", id, err)
				}
			}
		}
	}
	// The start record goes before the in-use set is computed: a backup
	// that finds it still there after naming this one in its own start
	// record to resume it is then seen by that computation
	// (ReadResumeBlocks).
	if err := r.backend.Delete(ctx, startedName(id)); err != nil && !errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("delete backup %s: %w", id, err)
	}
	var objs []storage.ObjectInfo
	err := r.backend.List(ctx, BackupPrefix(id), func(o storage.ObjectInfo) error {
		objs = append(objs, o)
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete backup %s: %w", id, err)
	}
	var names []string
	var now time.Time
	for _, o := range objs {
		if isRepackTarget(o.Name) {
			// A repack's new pack: while young, its relocation may be
			// about to name it (repack.go).
			if now.IsZero() {
				if now, err = r.storeNow(ctx); err != nil {
					return fmt.Errorf("delete backup %s: %w", id, err)
				}
			}
			if isFreshRepackTarget(o, now) {
				continue
			}
		}
		names = append(names, o.Name)
	}
	// Packs another backup references stay (retention by reference); the
	// set is taken after the summary is gone, so a backup that starts now
	// can no longer choose this one as its reference.
	refs, err := r.readRefs(ctx, id)
	if err != nil {
		return fmt.Errorf("delete backup %s: %w", id, err)
	}
	inUse, l, err := r.packsInUse(ctx, id)
	if err != nil {
		return fmt.Errorf("delete backup %s: %w", id, err)
	}
	for _, n := range names {
		if inUse[n] {
			continue
		}
		if err := r.backend.Delete(ctx, n); err != nil {
			return fmt.Errorf("delete backup %s: %w", id, err)
		}
	}
	if err := r.dropUnreferenced(ctx, refs, inUse, l); err != nil {
		return fmt.Errorf("delete backup %s: %w", id, err)
	}
	return nil
}

// NewestObject returns the modification time of a backup's newest object,
// which tells a running backup from abandoned debris.
func (r *Repository) NewestObject(ctx context.Context, id string) (time.Time, error) {
	var newest time.Time
	err := r.backend.List(ctx, BackupPrefix(id), func(o storage.ObjectInfo) error {
		if o.ModTime.After(newest) {
			newest = o.ModTime
		}
		return nil
	})
	return newest, err
}

// FileChecksum computes a file's manifest checksum from a local copy: the
// SHA-256 of the SHA-256s of its blocks of blockSize bytes (docs/format.md),
// so delta restore can compare files without downloading them.
func FileChecksum(path string, blockSize int64) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	outer := sha256.New()
	buf := make([]byte, blockSize)
	var size int64
	for {
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			s := sha256.Sum256(buf[:n])
			outer.Write(s[:])
			size += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return "", 0, err
		}
	}
	return hex.EncodeToString(outer.Sum(nil)), size, nil
}

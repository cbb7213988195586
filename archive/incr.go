package archive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
)

// Backup types (backup --type).
const (
	TypeFull     = "full"     // store every block afresh
	TypeIncr     = "incr"     // take files unchanged by size and mtime unread from the reference
	TypeChecksum = "checksum" // read every file, reuse blocks whose SHA-256 matches the reference's
)

// MTimeMargin is how much older than the reference backup's start a file's
// mtime must be for an incremental to take it unread: a write within the
// margin of the reference's start could share the mtime the reference
// recorded (coarse file system timestamps).
const MTimeMargin = 10 * time.Second

// ValidType checks a --type value ("" is the default: incr when there is
// a reference, else full).
func ValidType(t string) error {
	switch t {
	case "", TypeFull, TypeIncr, TypeChecksum:
		return nil
	}
	return fmt.Errorf("backup type %q: must be full, incr or checksum", t)
}

// captureStats counts what change capture did.
type captureStats struct {
	read     atomic.Int64 // bytes of the data directory read
	unread   atomic.Int64 // bytes taken unread from the reference
	lsnProbe atomic.Int64 // page headers read for the LSN cross-check
	resumed  atomic.Int64 // bytes of blocks reused from interrupted backups
}

// pickReference chooses the reference of a backup of type typ (after
// defaults): the backup named by want, else the newest committed backup
// of the same system. "" means the backup is full.
func pickReference(ctx context.Context, r *repo.Repository, typ, want string, systemID uint64) (string, error) {
	if typ == TypeFull {
		if want != "" {
			return "", errors.New("--reference makes no sense with --type full")
		}
		return "", nil
	}
	if want != "" {
		s, err := r.ReadSummary(ctx, want)
		if err != nil {
			return "", fmt.Errorf("reference backup: %w", err)
		}
		if s.SystemIdentifier != fmt.Sprint(systemID) {
			return "", fmt.Errorf("reference backup %s is of system %s, this server is %d", want, s.SystemIdentifier, systemID)
		}
		return want, nil
	}
	backups, _, err := r.ListBackups(ctx)
	if err != nil {
		return "", err
	}
	for i := len(backups) - 1; i >= 0; i-- {
		if backups[i].SystemIdentifier == fmt.Sprint(systemID) {
			return backups[i].ID, nil
		}
	}
	return "", nil
}

// loadReference reads the reference's manifest (after the start record
// named it, so a concurrent delete keeps its packs or this read fails) and
// decides how far it can be trusted: another timeline or a clock that went
// backwards since the reference turns incr into checksum.
func loadReference(ctx context.Context, r *repo.Repository, c *copier, id string, typ string, run backupRun, log *slog.Logger) (string, error) {
	m, err := r.ReadManifest(ctx, id)
	if err != nil && !errors.Is(err, repo.ErrBackupNotFound) {
		// A delete may have removed the summary and then the manifest
		// between the two reads.
		if _, serr := r.ReadSummary(ctx, id); errors.Is(serr, repo.ErrBackupNotFound) {
			err = serr
		}
	}
	if errors.Is(err, repo.ErrBackupNotFound) && typ != TypeChecksum {
		log.Warn("reference backup is gone (deleted meanwhile); taking a full backup", "reference", id)
		return TypeFull, nil
	}
	if err != nil {
		return "", fmt.Errorf("reference backup %s: %w", id, err)
	}
	if !hasBlockHashes(m) {
		log.Info("reference backup was written before incremental backups (no block hashes); taking a full backup", "reference", id)
		return TypeFull, nil
	}
	if m.BlockSize != c.o.BlockSize {
		log.Warn("reference backup has another block size; taking a full backup", "reference", id, "its_block_size", m.BlockSize)
		return TypeFull, nil
	}
	if typ == TypeIncr {
		switch {
		case run.timeline == 0 || m.Timeline != run.timeline:
			log.Info("timeline changed since the reference backup: reading every file (checksum mode)", "reference", id, "reference_timeline", m.Timeline, "timeline", run.timeline)
			typ = TypeChecksum
		case run.start.Before(m.StartTime):
			log.Info("clock is behind the reference backup's start: reading every file (checksum mode)", "reference", id, "reference_start", m.StartTime)
			typ = TypeChecksum
		case m.Host != run.host || m.PGData == "" || m.PGData != run.pgdata:
			// Another member's files (or this host's at another path) have
			// their own mtimes: one that happens to match says nothing.
			log.Info("reference backup was taken from another data directory: reading every file (checksum mode)", "reference", id,
				"reference_host", m.Host, "reference_pgdata", m.PGData, "host", run.host, "pgdata", run.pgdata)
			typ = TypeChecksum
		}
	}
	c.ref = m
	c.refFiles = make(map[string]*repo.File, len(m.Files))
	for i := range m.Files {
		c.refFiles[m.Files[i].Path] = &m.Files[i]
	}
	c.skipUnread = typ == TypeIncr
	c.refCutoff = m.StartTime.Add(-MTimeMargin).UnixNano()
	if lsn, err := pg.ParseLSN(m.StopLSN); err == nil {
		c.refStopLSN = lsn
	}
	return typ, nil
}

// hasBlockHashes reports whether m records block hashes (a manifest
// written by a pgkeep with incremental backups).
func hasBlockHashes(m *repo.Manifest) bool {
	for _, f := range m.Files {
		for _, b := range f.Blocks {
			if !b.Composite() { // a composite has no hash of its own
				return b.HasDigest()
			}
		}
	}
	return false
}

// takeUnread reports whether f can be listed with the reference's blocks
// without reading it: same size and mtime as when the reference read it,
// and that mtime older than the reference's start by MTimeMargin, and
// every block of it has a recorded hash.
func (c *copier) takeUnread(f *sourceFile, rf *repo.File) bool {
	if !c.skipUnread || rf == nil || rf.MTime == 0 || rf.Size != f.Size || rf.MTime != f.MTime || f.MTime >= c.refCutoff {
		return false
	}
	var covered int64
	for _, b := range rf.Blocks {
		if !b.HasDigest() && !b.Composite() || b.FileOffset != covered {
			return false
		}
		covered += b.Size
	}
	return covered == f.Size
}

// reuseFile lists file i with the reference's blocks, after the LSN
// cross-check.
func (c *copier) reuseFile(i int, f *sourceFile, rf *repo.File) error {
	if err := c.crossCheckLSN(f); err != nil {
		return err
	}
	n := len(rf.Blocks)
	c.files[i].BlockSize = rf.BlockSize // the blocks' cut is the reference's
	c.files[i].Map = rf.Map             // and its file map (format 4), not a copy
	c.files[i].MapChain = rf.MapChain   // with the objects that map is resolved from
	c.foreign[i] = make([]foreignPack, n)
	if !hasComposite(rf.Blocks) {
		// The reference's list itself: nothing writes to a file taken
		// unread, and a 15 GiB cluster's lists are 56 MB a copy.
		c.blocks[i] = rf.Blocks
		for b := range rf.Blocks {
			c.foreign[i][b] = c.foreignNames.ofRef(c.ref.Packs, rf.Blocks[b].Pack)
		}
		c.stats.unread.Add(f.Size)
		return nil
	}
	c.blocks[i] = make([]repo.BlockRef, n)
	for b := range rf.Blocks {
		if err := c.takeRefBlock(i, f, rf, b); err != nil {
			return err
		}
	}
	c.stats.unread.Add(f.Size)
	return nil
}

// hasComposite reports whether a block of blocks is composite.
func hasComposite(blocks []repo.BlockRef) bool {
	for i := range blocks {
		if blocks[i].Composite() {
			return true
		}
	}
	return false
}

// takeRefBlock lists block b of file i as the reference's block b, unread.
func (c *copier) takeRefBlock(i int, f *sourceFile, rf *repo.File, b int) error {
	ref := rf.Blocks[b]
	if ref.Composite() {
		c.takeRefComposite(i, rf, b)
		return nil
	}
	if !ref.HasDigest() {
		return fmt.Errorf("reference backup %s: %s: block at %d has no hash", c.ref.ID, f.Rel, ref.FileOffset)
	}
	c.blocks[i][b] = ref
	c.foreign[i][b] = c.foreignNames.ofRef(c.ref.Packs, ref.Pack)
	return nil
}

// refBlock is the reference's block b of rf if it can stand for the block
// at off when the content matches.
func (c *copier) refBlock(rf *repo.File, b int, off int64) *repo.BlockRef {
	if rf == nil || b >= len(rf.Blocks) {
		return nil
	}
	ref := &rf.Blocks[b]
	if ref.FileOffset != off || !ref.HasDigest() {
		return nil
	}
	return ref
}

// crossCheckLSN makes a missed change loud: a relation file taken unread
// because its mtime says it did not change must not hold a page written
// after the reference read it. Such a page has an LSN past the reference's
// stop (every page on disk while the reference read the file is older,
// on a standby too, whose replay had not gone further); and one written
// before this backup's start would have been on disk before the file was
// looked at, so its mtime should have moved. A page at or past this
// backup's start proves nothing (written after the look, WAL replay
// redoes it), nor does one between the reference's start and stop (a
// standby's backup starts at its last restartpoint, often well before
// pages already on disk). It samples the first and the last page (two
// 8-byte reads a file); a hit means mtimes cannot be trusted here, and
// --type checksum is the way out.
func (c *copier) crossCheckLSN(f *sourceFile) error {
	if c.refStopLSN == 0 || c.refStopLSN >= c.startLSN || f.Size < pg.BlockSize {
		return nil
	}
	if _, ok := pg.ChecksummedFile(f.Rel); !ok {
		return nil
	}
	fh, err := os.Open(f.Abs)
	if os.IsNotExist(err) {
		return nil // dropped meanwhile; WAL replay removes it
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", f.Rel, err)
	}
	defer fh.Close()
	var hdr [24]byte
	for _, off := range []int64{0, (f.Size/pg.BlockSize - 1) * pg.BlockSize} {
		if _, err := fh.ReadAt(hdr[:], off); err != nil && err != io.EOF {
			return fmt.Errorf("read %s: %w", f.Rel, err)
		}
		c.stats.lsnProbe.Add(1)
		if pg.IsNewPage(hdr[:]) {
			continue
		}
		lsn := pg.ParsePageHeader(hdr[:]).LSN
		if lsn > c.refStopLSN && lsn < c.startLSN {
			return fmt.Errorf("%s: page at offset %d has LSN %s, newer than reference backup %s's stop %s, but the file's size and mtime say it did not change; mtimes cannot be trusted here: use --type checksum",
				f.Rel, off, lsn, c.ref.ID, c.refStopLSN)
		}
	}
	return nil
}

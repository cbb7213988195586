// Package archive is pgkeep's write path: WAL files PostgreSQL hands to
// archive_command, and (later) base backups.
package archive

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/walmap"
)

// ErrConflict means the repository already holds a different file under the
// name being pushed. The stored file is never replaced.
var ErrConflict = repo.ErrWALConflict

// PushOptions configures one archive_command call.
type PushOptions struct {
	// Path is %p: the file to archive, relative to the working directory
	// (PostgreSQL runs archive_command in the data directory) or absolute.
	Path string
	// PushAhead is how many other files with .ready status to push in the
	// same call, so the archiver's next calls for them return at once.
	PushAhead int
	// Concurrency bounds the uploads running at once (at least 1).
	Concurrency int
	// SystemIdentifier of the cluster, 0 if unknown; checked against the
	// repository's so two clusters never share WAL names.
	SystemIdentifier uint64
	// StateDir remembers files pushed ahead; default <pg_wal>/pgkeep/pushed.
	StateDir string
	// NoBlockMaps turns off the block map (docs/format-walmap.md) that is
	// otherwise built from each segment and stored beside it
	// (wal.block_maps: false).
	NoBlockMaps bool
	Logger      *slog.Logger
}

// pushedRecord is what push-ahead remembers about a file it stored. It is a
// hint only: if it is lost or does not match the file, the file is checked
// against the repository again.
type pushedRecord struct {
	// Repo is the ID of the repository the file was stored in: a record
	// means nothing for another one (the config may point elsewhere since).
	Repo    string `json:"repo"`
	Size    int64  `json:"size"`
	ModTime int64  `json:"mtime_ns"`
	SHA256  string `json:"sha256"`
}

// PushWAL archives the file at o.Path and, if asked, pushes ahead other
// files PostgreSQL has marked .ready. It returns nil only once o.Path's
// content is durably in the repository.
func PushWAL(ctx context.Context, r *repo.Repository, o PushOptions) error {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	name := filepath.Base(o.Path)
	if _, err := pg.ParseWALFileName(name); err != nil {
		return fmt.Errorf("push %s: %w", o.Path, err)
	}
	walDir := filepath.Dir(o.Path)
	stateDir := o.StateDir
	if stateDir == "" {
		stateDir = filepath.Join(walDir, "pgkeep", "pushed")
	}
	r.SetBindingCache(filepath.Dir(stateDir))
	if err := r.CheckWritable(ctx); err != nil {
		return fmt.Errorf("push %s: %w", name, err)
	}
	repoID := r.ID()

	if fi, err := os.Lstat(o.Path); err == nil && fi.Mode().IsRegular() && matchesRecord(stateDir, name, repoID, fi) {
		// Pushed ahead by an earlier call; the record is consumed so a later
		// call for the same name (after a crash) checks the repository.
		os.Remove(filepath.Join(stateDir, name))
		log.Debug("already pushed ahead", "file", name)
		return nil
	}

	ahead := readyFiles(walDir, name, o.PushAhead, stateDir, repoID)
	conc := max(o.Concurrency, 1)
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	for _, a := range ahead {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			p := filepath.Join(walDir, a)
			rec, err := pushFile(ctx, r, p, o, log)
			if err != nil {
				// Not fatal: the file stays .ready and PostgreSQL asks again.
				log.Warn("push-ahead failed", "file", a, "err", err)
				return
			}
			writeRecord(stateDir, a, rec)
		}()
	}
	sem <- struct{}{}
	_, err := pushFile(ctx, r, o.Path, o, log)
	<-sem
	wg.Wait()
	cleanRecords(stateDir, 24*time.Hour)
	if err != nil {
		return fmt.Errorf("push %s: %w", name, err)
	}
	log.Debug("pushed", "file", name, "ahead", len(ahead))
	return nil
}

// pushFile stores one file, treating an identical archived copy as success.
// Before anything is stored the file must be what its name says: a regular
// file; a segment of the repository's system, of the size its page header
// records, not past a newer timeline's fork; a parseable history file.
func pushFile(ctx context.Context, r *repo.Repository, path string, o PushOptions, log *slog.Logger) (pushedRecord, error) {
	sysid := o.SystemIdentifier
	name := filepath.Base(path)
	wf, err := pg.ParseWALFileName(name)
	if err != nil {
		return pushedRecord{}, err
	}
	f, fi, err := openRegular(path)
	if err != nil {
		return pushedRecord{}, err
	}
	defer f.Close()
	diverged, err := checkWALFile(ctx, r, f, wf, fi.Size(), sysid)
	if err != nil {
		return pushedRecord{}, err
	}
	rec := pushedRecord{Repo: r.ID(), Size: fi.Size(), ModTime: fi.ModTime().UnixNano()}
	if diverged == nil {
		if o.NoBlockMaps || (wf.Kind != pg.KindSegment && wf.Kind != pg.KindPartial) {
			sum, err := r.PutWAL(ctx, wf, f, fi.Size())
			rec.SHA256 = hex.EncodeToString(sum[:])
			return rec, err
		}
		// The map is built from the very bytes being stored, beside their
		// hashing and compression, and stored beside the segment's upload.
		sum, mapErr, err := r.PutWALSegment(ctx, wf, f, fi.Size(), func(data []byte) (m *walmap.Map, err error) {
			defer func() {
				// A walker bug must cost the map, never the archiving.
				if p := recover(); p != nil {
					m, err = nil, fmt.Errorf("walker failed: %v", p)
				}
			}()
			return walmap.Build(data, wf.Name, uint32(fi.Size()))
		})
		rec.SHA256 = hex.EncodeToString(sum[:])
		if err != nil {
			return rec, err
		}
		// A map is an optimisation for later backups: failing to build or
		// store one is a warning, never a failed archive_command.
		var notBuilt *repo.MapNotBuiltError
		if errors.As(mapErr, &notBuilt) {
			log.Warn("block map not built; backups over this segment read by hashes", "file", wf.Name, "err", notBuilt.Err)
		} else if mapErr != nil {
			log.Warn("block map not stored; backups over this segment read by hashes", "file", wf.Name, "err", mapErr)
		}
		return rec, nil
	}
	// Only the very same file, archived before the fork was known, is
	// accepted: PostgreSQL retries a refused file forever.
	sum, err := fileSHA256(f)
	if err != nil {
		return rec, err
	}
	rec.SHA256 = hex.EncodeToString(sum[:])
	if err := r.CompareWAL(ctx, wf, sum, fi.Size()); errors.Is(err, repo.ErrNotFound) || errors.Is(err, repo.ErrWALConflict) {
		return rec, diverged
	} else if err != nil {
		return rec, err
	}
	return rec, nil
}

// openRegular opens path for reading only if it is a regular file: a FIFO
// would block open(2) forever, and a symlink or device is not WAL
// PostgreSQL wrote.
func openRegular(path string) (*os.File, os.FileInfo, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%s is not a regular file (%s); PostgreSQL archives only regular files", path, fi.Mode().Type())
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, nil, err
	}
	if fi, err = f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		if err == nil {
			err = fmt.Errorf("%s is not a regular file", path)
		}
		return nil, nil, err
	}
	return f, fi, nil
}

// checkWALFile checks f against its name and the repository before it is
// stored. A segment past a newer timeline's fork is not an error yet: it
// is returned as diverged, for the caller to accept only an identical
// archived copy.
func checkWALFile(ctx context.Context, r *repo.Repository, f *os.File, wf pg.WALFile, size int64, sysid uint64) (diverged error, err error) {
	switch wf.Kind {
	case pg.KindSegment, pg.KindPartial:
		buf := make([]byte, pg.WALLongPageHeaderSize)
		if _, err := f.ReadAt(buf, 0); err != nil {
			return nil, fmt.Errorf("%s: read page header: %w", wf.Name, err)
		}
		h, err := pg.ParseWALPageHeader(buf)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", wf.Name, err)
		}
		if err := h.CheckSegment(wf, size); err != nil {
			return nil, err
		}
		if sysid != 0 && h.SystemIdentifier != sysid {
			return nil, fmt.Errorf("%s was written by database system %d, but the data directory is %d", wf.Name, h.SystemIdentifier, sysid)
		}
		if err := r.BindSystem(ctx, h.SystemIdentifier); err != nil {
			return nil, fmt.Errorf("%s: %w", wf.Name, err)
		}
		if wf.Kind == pg.KindSegment {
			if err := r.CheckNotDiverged(ctx, wf, size); errors.Is(err, repo.ErrDiverged) {
				return err, nil
			} else if err != nil {
				return nil, err
			}
		}
	case pg.KindHistory:
		data := make([]byte, min(size, maxHistorySize+1))
		if _, err := f.ReadAt(data, 0); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: %w", wf.Name, err)
		}
		sw, err := pg.ParseHistory(data)
		switch {
		case size > maxHistorySize:
			return nil, fmt.Errorf("%s is %d bytes; refusing a history file over %d", wf.Name, size, maxHistorySize)
		case err != nil:
			return nil, fmt.Errorf("%s: %w", wf.Name, err)
		case len(sw) == 0:
			return nil, fmt.Errorf("%s names no parent timeline (%d bytes); PostgreSQL never archives an empty history file", wf.Name, size)
		}
		if sysid != 0 {
			if err := r.BindSystem(ctx, sysid); err != nil {
				return nil, fmt.Errorf("%s: %w", wf.Name, err)
			}
		}
	case pg.KindBackup:
		if size == 0 || size > maxHistorySize {
			return nil, fmt.Errorf("%s is %d bytes, not a backup history file", wf.Name, size)
		}
		if sysid != 0 {
			if err := r.BindSystem(ctx, sysid); err != nil {
				return nil, fmt.Errorf("%s: %w", wf.Name, err)
			}
		}
	}
	return nil, nil
}

// maxHistorySize bounds history and backup history files (a few lines per
// timeline switch; thousands of switches fit).
const maxHistorySize = 1 << 20

func fileSHA256(f *os.File) ([32]byte, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, 1<<62)); err != nil {
		return [32]byte{}, err
	}
	return [32]byte(h.Sum(nil)), nil
}

// readyFiles lists up to n files other than current that PostgreSQL has
// marked .ready, in the order the archiver would ask for them, skipping
// those already pushed ahead.
func readyFiles(walDir, current string, n int, stateDir, repoID string) []string {
	if n <= 0 {
		return nil
	}
	entries, err := os.ReadDir(filepath.Join(walDir, "archive_status"))
	if err != nil {
		return nil
	}
	var history, rest []string
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".ready")
		if !ok || name == current {
			continue
		}
		wf, err := pg.ParseWALFileName(name)
		if err != nil {
			continue
		}
		if fi, err := os.Lstat(filepath.Join(walDir, name)); err != nil || matchesRecord(stateDir, name, repoID, fi) {
			continue
		}
		if wf.Kind == pg.KindHistory {
			history = append(history, name)
		} else {
			rest = append(rest, name)
		}
	}
	sort.Strings(history)
	sort.Strings(rest)
	all := append(history, rest...)
	if len(all) > n {
		all = all[:n]
	}
	return all
}

func matchesRecord(stateDir, name, repoID string, fi os.FileInfo) bool {
	data, err := os.ReadFile(filepath.Join(stateDir, name))
	if err != nil {
		return false
	}
	var rec pushedRecord
	if json.Unmarshal(data, &rec) != nil {
		return false
	}
	return rec.Repo == repoID && rec.Size == fi.Size() && rec.ModTime == fi.ModTime().UnixNano()
}

func writeRecord(stateDir, name string, rec pushedRecord) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return
	}
	data, _ := json.Marshal(rec)
	tmp := filepath.Join(stateDir, "."+name+".tmp")
	if os.WriteFile(tmp, data, 0o600) == nil {
		os.Rename(tmp, filepath.Join(stateDir, name))
	}
}

// cleanRecords drops records nobody asked for within maxAge (the file was
// archived by someone else, or the cluster was rebuilt).
func cleanRecords(stateDir string, maxAge time.Duration) {
	entries, err := os.ReadDir(stateDir)
	if err != nil {
		return
	}
	cutoff := time.Now().Add(-maxAge)
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && fi.ModTime().Before(cutoff) {
			os.Remove(filepath.Join(stateDir, e.Name()))
		}
	}
}

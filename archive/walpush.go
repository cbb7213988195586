// Package archive is pgkeep's write path: WAL files PostgreSQL hands to
// archive_command, and (later) base backups.
package archive

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/storage"
)

// ErrConflict means the repository already holds a different file under the
// name being pushed. The stored file is never replaced.
var ErrConflict = errors.New("a different file with this name is already archived; refusing to overwrite it")

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
	Logger   *slog.Logger
}

// pushedRecord is what push-ahead remembers about a file it stored. It is a
// hint only: if it is lost or does not match the file, the file is checked
// against the repository again.
type pushedRecord struct {
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
	if err := r.CheckSystem(o.SystemIdentifier); err != nil {
		return fmt.Errorf("push %s: %w", name, err)
	}
	walDir := filepath.Dir(o.Path)
	stateDir := o.StateDir
	if stateDir == "" {
		stateDir = filepath.Join(walDir, "pgkeep", "pushed")
	}

	if fi, err := os.Stat(o.Path); err == nil && matchesRecord(stateDir, name, fi) {
		// Pushed ahead by an earlier call; the record is consumed so a later
		// call for the same name (after a crash) checks the repository.
		os.Remove(filepath.Join(stateDir, name))
		log.Debug("already pushed ahead", "file", name)
		return nil
	}

	ahead := readyFiles(walDir, name, o.PushAhead, stateDir)
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
			rec, err := pushFile(ctx, r, p)
			if err != nil {
				// Not fatal: the file stays .ready and PostgreSQL asks again.
				log.Warn("push-ahead failed", "file", a, "err", err)
				return
			}
			writeRecord(stateDir, a, rec)
		}()
	}
	sem <- struct{}{}
	_, err := pushFile(ctx, r, o.Path)
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
func pushFile(ctx context.Context, r *repo.Repository, path string) (pushedRecord, error) {
	name := filepath.Base(path)
	wf, err := pg.ParseWALFileName(name)
	if err != nil {
		return pushedRecord{}, err
	}
	f, err := os.Open(path)
	if err != nil {
		return pushedRecord{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return pushedRecord{}, err
	}
	if wf.Kind == pg.KindSegment && !pg.ValidSegmentSize(fi.Size()) {
		return pushedRecord{}, fmt.Errorf("%s is %d bytes, not a whole WAL segment", path, fi.Size())
	}
	objName := repo.WALObjectName(wf)
	sum, err := r.PutReader(ctx, objName, f, fi.Size(), storage.PutOptions{IfAbsent: true})
	rec := pushedRecord{Size: fi.Size(), ModTime: fi.ModTime().UnixNano(), SHA256: hex.EncodeToString(sum[:])}
	if err == nil {
		return rec, nil
	}
	if !errors.Is(err, storage.ErrExists) {
		return rec, err
	}
	h, err := r.Header(ctx, objName)
	if err != nil {
		return rec, fmt.Errorf("check archived copy: %w", err)
	}
	if h.SHA256 != sum || h.Size != fi.Size() {
		return rec, fmt.Errorf("%w (archived sha256 %x…, %d bytes; local sha256 %x…, %d bytes)",
			ErrConflict, h.SHA256[:6], h.Size, sum[:6], fi.Size())
	}
	return rec, nil
}

// readyFiles lists up to n files other than current that PostgreSQL has
// marked .ready, in the order the archiver would ask for them, skipping
// those already pushed ahead.
func readyFiles(walDir, current string, n int, stateDir string) []string {
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
		if _, err := os.Stat(filepath.Join(stateDir, name)); err == nil {
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

func matchesRecord(stateDir, name string, fi os.FileInfo) bool {
	data, err := os.ReadFile(filepath.Join(stateDir, name))
	if err != nil {
		return false
	}
	var rec pushedRecord
	if json.Unmarshal(data, &rec) != nil {
		return false
	}
	return rec.Size == fi.Size() && rec.ModTime == fi.ModTime().UnixNano()
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

package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgkeep/pgkeep/storage"
)

// Resume (docs/format.md "Resume of an interrupted backup"): a backup
// writes, after each pack is stored, an index of what the pack holds
// (backups/<id>/index/<NNNNNN>, encoded like data). A killed backup has no
// manifest, but its indexes say which file blocks its packs hold, so the
// next backup reuses every such block whose hash equals the block it reads
// at that offset now, naming the killed backup's packs as it names a
// reference's. A committed backup removes its indexes: it is never resumed.

// indexName is the index of pack n of backup id.
func indexName(id string, n int) string { return fmt.Sprintf("%sindex/%06d", BackupPrefix(id), n) }

// PackIndex is an index object's plain content: the blocks one pack
// holds, by file. Block references' Pack is 0 (the one pack).
type PackIndex struct {
	Pack  Pack          `json:"pack"`
	Files []IndexedFile `json:"files"`
}

// IndexedFile is the blocks of one file stored in the pack.
type IndexedFile struct {
	Path   string     `json:"path"`
	Blocks []BlockRef `json:"blocks"`
}

// WritePackIndex stores the index of pack n of backup id, after the pack
// itself is stored (so an index always describes a complete pack).
func (r *Repository) WritePackIndex(ctx context.Context, id string, n int, idx PackIndex) error {
	data, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	if err := r.PutObject(ctx, indexName(id, n), data, storage.PutOptions{IfAbsent: true}); err != nil {
		return fmt.Errorf("write pack index: %w", err)
	}
	return nil
}

// DropPackIndexes removes the pack indexes of backup id once it is
// committed (best effort: DeleteBackup removes what is left with the
// backup). It returns how many it could not remove.
func (r *Repository) DropPackIndexes(ctx context.Context, id string) (int, error) {
	var names []string
	if err := r.backend.List(ctx, BackupPrefix(id)+"index/", func(o storage.ObjectInfo) error {
		names = append(names, o.Name)
		return nil
	}); err != nil {
		return 0, err
	}
	// One request each, a few at a time: a large backup has thousands.
	var (
		mu       sync.Mutex
		firstErr error
		failed   int
		wg       sync.WaitGroup
	)
	next := make(chan string)
	for range min(indexDeleters, len(names)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range next {
				if err := r.backend.Delete(ctx, n); err != nil && !errors.Is(err, storage.ErrNotFound) {
					mu.Lock()
					failed++
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for _, n := range names {
		next <- n
	}
	close(next)
	wg.Wait()
	return failed, firstErr
}

// indexDeleters bounds the pack index requests in flight (deletes at a
// commit, reads at a resume).
const indexDeleters = 8

// maxResumeSources bounds how many interrupted backups one backup reuses
// blocks of (each costs reading its indexes).
const maxResumeSources = 4

// UnfinishedBackups returns the backups a new backup of system may resume:
// uncommitted backups of that system (their start record says so) that
// are not running any more (marked failed, a heartbeat older than
// RunningGrace by the store's clock, or a heartbeat of this host whose
// process is gone), that have pack indexes, newest first, at most
// maxResumeSources. Whether one still runs is only a choice: reusing a
// running backup's packs would be as safe (its packs are complete objects,
// and the start record that names it keeps them), just pointless.
func (r *Repository) UnfinishedBackups(ctx context.Context, system string) ([]string, error) {
	l, err := r.listBackupObjects(ctx)
	if err != nil {
		return nil, err
	}
	var cands []string
	for i := len(l.debris) - 1; i >= 0; i-- {
		id := l.debris[i]
		if !l.retired[id] {
			cands = append(cands, id)
		}
	}
	var out []string
	var now time.Time
	for _, id := range cands {
		if len(out) == maxResumeSources {
			break
		}
		var hasIndex bool
		if err := r.backend.List(ctx, BackupPrefix(id)+"index/", func(storage.ObjectInfo) error {
			hasIndex = true
			return nil
		}); err != nil {
			return nil, err
		}
		if !hasIndex {
			continue
		}
		rec, err := r.ReadStartRecord(ctx, id)
		if err != nil || rec.SystemIdentifier != system {
			continue // a start record that does not parse or another system's: not ours to reuse
		}
		if now.IsZero() {
			if now, err = r.storeNow(ctx); err != nil {
				return nil, err
			}
		}
		dead, err := r.stopped(ctx, id, now)
		if err != nil {
			return nil, err
		}
		if dead {
			out = append(out, id)
		}
	}
	return out, nil
}

// stopped reports whether uncommitted backup id has stopped for good.
func (r *Repository) stopped(ctx context.Context, id string, now time.Time) (bool, error) {
	if _, err := r.backend.Stat(ctx, failedName(id)); err == nil {
		return true, nil
	}
	info, err := r.backend.Stat(ctx, aliveName(id))
	if errors.Is(err, storage.ErrNotFound) {
		return true, nil // never heartbeat: an index without a heartbeat is from no pgkeep that runs
	}
	if err != nil {
		return false, err
	}
	if now.Sub(info.ModTime) >= RunningGrace {
		return true, nil
	}
	rc, err := r.backend.Get(ctx, aliveName(id))
	if err != nil {
		return false, nil
	}
	defer rc.Close()
	data, _ := io.ReadAll(io.LimitReader(rc, 1<<16))
	var a AliveRecord
	if json.Unmarshal(data, &a) != nil {
		return false, nil
	}
	host, _ := os.Hostname()
	if a.Host != host || a.PID <= 0 || a.PID == os.Getpid() {
		return false, nil
	}
	// Killed on this host (kill -9, OOM): its process is gone. A reused
	// PID reads as alive, and the backup waits for the heartbeat to age.
	return errors.Is(syscall.Kill(a.PID, 0), syscall.ESRCH), nil
}

// ResumeBlocks is what an interrupted backup stored: the packs its indexes
// describe (each checked to be stored at the size its index says), and
// their blocks by file path, with Pack indexing Packs.
type ResumeBlocks struct {
	Packs []Pack
	Files map[string][]BlockRef
}

// ReadResumeBlocks reads the pack indexes of interrupted backup id. The
// caller's start record must name id first: the check that id's start
// record still exists then proves that a delete of id will see that
// name and keep id's packs (DeleteBackup removes a backup's start record
// before it computes what is in use). Indexes whose pack is missing or
// not at its size are skipped.
func (r *Repository) ReadResumeBlocks(ctx context.Context, id string) (*ResumeBlocks, error) {
	if err := ValidBackupID(id); err != nil {
		return nil, err
	}
	if _, err := r.backend.Stat(ctx, startedName(id)); err != nil {
		return nil, fmt.Errorf("backup %s is being deleted: %w", id, err)
	}
	stored := map[string]int64{}
	var indexes []string
	if err := r.backend.List(ctx, BackupPrefix(id), func(o storage.ObjectInfo) error {
		rest := strings.TrimPrefix(o.Name, BackupPrefix(id))
		switch {
		case strings.HasPrefix(rest, "pack/"):
			stored[o.Name] = o.Size
		case strings.HasPrefix(rest, "index/"):
			indexes = append(indexes, o.Name)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	sort.Strings(indexes)
	out := &ResumeBlocks{Files: map[string][]BlockRef{}}
	// Read a few at a time (one request each; a large backup has
	// thousands), then used in order.
	read := make([]PackIndex, len(indexes))
	errs := make([]error, len(indexes))
	forEachIndex(len(indexes), indexDeleters, func(i int) {
		var buf bytes.Buffer
		if _, err := r.GetObject(ctx, indexes[i], &buf); err != nil {
			errs[i] = fmt.Errorf("%s: %w", indexes[i], err)
		} else if err := json.Unmarshal(buf.Bytes(), &read[i]); err != nil {
			errs[i] = fmt.Errorf("%s: %w: %v", indexes[i], ErrCorrupt, err)
		}
	})
	for i, name := range indexes {
		if errs[i] != nil {
			return nil, errs[i]
		}
		idx := read[i]
		want := strings.Replace(name, "/index/", "/pack/", 1)
		if idx.Pack.Name != want || !isPackName(want) {
			return nil, fmt.Errorf("%s: %w: it describes %q", name, ErrCorrupt, idx.Pack.Name)
		}
		if size, ok := stored[want]; !ok || size != idx.Pack.Size {
			continue
		}
		k := len(out.Packs)
		out.Packs = append(out.Packs, idx.Pack)
		for _, f := range idx.Files {
			if !localPath(f.Path) {
				return nil, fmt.Errorf("%s: %w: path %q", name, ErrCorrupt, f.Path)
			}
			for _, b := range f.Blocks {
				if b.Offset < 0 || b.Length <= 0 || b.Offset+b.Length > idx.Pack.Size || b.Size <= 0 || b.FileOffset < 0 || b.ChunkOffset < 0 || !b.HasDigest() {
					return nil, fmt.Errorf("%s: %w: block %+v", name, ErrCorrupt, b)
				}
				b.Pack = k
				out.Files[f.Path] = append(out.Files[f.Path], b)
			}
		}
	}
	return out, nil
}

// Add records blocks of file path stored in the pack (consecutive blocks
// of one file share an entry).
func (x *PackIndex) Add(path string, refs []BlockRef) {
	for i := range refs {
		refs[i].Pack = 0
	}
	if n := len(x.Files); n > 0 && x.Files[n-1].Path == path {
		x.Files[n-1].Blocks = append(x.Files[n-1].Blocks, refs...)
		return
	}
	x.Files = append(x.Files, IndexedFile{Path: path, Blocks: refs})
}

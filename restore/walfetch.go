// Package restore is pgkeep's read path: WAL for restore_command, and
// (later) base backups back into a data directory.
package restore

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgkeep/pgkeep/internal/fsync"
	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
)

// ErrWALNotFound means the archive does not hold the requested file, which
// is routine during recovery: PostgreSQL probes for files that do not exist
// yet.
var ErrWALNotFound = errors.New("not in the archive")

// RecoveryFileName is the %p PostgreSQL passes for a WAL segment during
// archive recovery. Only then does a prefetch make sense: pg_rewind and
// other callers ask for files written under their own names.
const RecoveryFileName = "RECOVERYXLOG"

// FetchOptions configures one restore_command call.
type FetchOptions struct {
	Name string // %f
	Dest string // %p
	// PrefetchDir holds segments a background prefetch has already fetched
	// and verified; "" disables the lookup.
	PrefetchDir string
	Logger      *slog.Logger
}

// FetchResult tells the caller what it needs to start a prefetch.
type FetchResult struct {
	File pg.WALFile
	Size int64
	// FromPrefetch is true when the file came from the prefetch directory.
	FromPrefetch bool
}

// DefaultPrefetchDir is where prefetched segments live for a recovery file
// written to dest (pg_wal/RECOVERYXLOG): inside pg_wal, so a rename moves
// them into place without copying.
func DefaultPrefetchDir(dest string) string {
	return filepath.Join(filepath.Dir(dest), "pgkeep", "prefetch")
}

// ShouldPrefetch reports whether dest is PostgreSQL's recovery file for a
// segment, the only case in which fetching ahead helps.
func ShouldPrefetch(f pg.WALFile, dest string) bool {
	return f.Kind == pg.KindSegment && filepath.Base(dest) == RecoveryFileName
}

// FetchWAL writes the archived file o.Name to o.Dest: to a temporary name
// first, fsynced, then renamed, so PostgreSQL never sees a partial file.
func FetchWAL(ctx context.Context, r *repo.Repository, o FetchOptions) (FetchResult, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	wf, err := pg.ParseWALFileName(o.Name)
	if err != nil {
		return FetchResult{}, fmt.Errorf("fetch: %w", err)
	}
	res := FetchResult{File: wf}
	if o.PrefetchDir != "" && wf.Kind == pg.KindSegment {
		if size, ok := TakePrefetched(o.PrefetchDir, o.Name, o.Dest, log); ok {
			res.Size, res.FromPrefetch = size, true
			return res, nil
		}
	}
	size, err := fetchTo(ctx, r, wf, o.Dest)
	if err != nil {
		return res, fmt.Errorf("fetch %s: %w", o.Name, err)
	}
	res.Size = size
	return res, nil
}

// fetchTo decodes the archived file into dest via a temporary file.
func fetchTo(ctx context.Context, r *repo.Repository, wf pg.WALFile, dest string) (int64, error) {
	obj, err := r.FetchWAL(ctx, wf)
	if errors.Is(err, repo.ErrNotFound) {
		return 0, ErrWALNotFound
	}
	if err != nil {
		return 0, err
	}
	defer obj.Close()
	tmp := dest + ".pgkeep-tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, err
	}
	h, err := obj.Decode(chunkedWriter{f: f})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dest)
	}
	if err != nil {
		os.Remove(tmp)
		return 0, err
	}
	// Best effort: PostgreSQL reads the file now; after a crash recovery
	// asks for it again.
	fsync.Dir(filepath.Dir(dest))
	return h.Size, nil
}

// chunkedWriter writes to a file in writeChunk pieces, whatever size the
// decoder hands it (a whole segment at once, when decoded in memory).
type chunkedWriter struct{ f *os.File }

func (w chunkedWriter) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := w.f.Write(p[n:min(n+writeChunk, len(p))])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Prefetched files are named <segment>.<sha256 of content>, written only
// after the object's checksum was verified, and checked again before use.
func prefetchedName(dir, name string) (string, string, bool) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", "", false
	}
	for _, e := range entries {
		if rest, ok := strings.CutPrefix(e.Name(), name+"."); ok && len(rest) == 64 {
			return filepath.Join(dir, e.Name()), rest, true
		}
	}
	return "", "", false
}

// TakePrefetched moves a prefetched segment to dest and reports whether
// there was one. The prefetch verified
// the object's checksum while decoding and fsynced the file before giving
// it its final name, so a file under that name is whole; only its size is
// checked here, which keeps this path to a rename.
func TakePrefetched(dir, name, dest string, log *slog.Logger) (int64, bool) {
	path, _, ok := prefetchedName(dir, name)
	if !ok {
		if !waitInFlight(dir, name) {
			return 0, false
		}
		if path, _, ok = prefetchedName(dir, name); !ok {
			return 0, false
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		return 0, false
	}
	if !pg.ValidSegmentSize(fi.Size()) {
		log.Warn("discarding damaged prefetched segment", "file", name, "size", fi.Size())
		os.Remove(path)
		return 0, false
	}
	if err := os.Rename(path, dest); err != nil {
		return 0, false
	}
	// No fsync of pg_wal: the file's data was synced before it got its
	// prefetched name, and the rename need not survive a crash (after one
	// PostgreSQL unlinks RECOVERYXLOG and asks for the segment again; the
	// copy is then still, or again, in the prefetch directory or the
	// repository). A directory fsync here waits for the journal commit of
	// everything replay wrote meanwhile: it was most of the ~35 ms per
	// prefetched segment measured during replay. Another destination than
	// RECOVERYXLOG may be kept for good: synced as before.
	if filepath.Base(dest) != RecoveryFileName {
		fsync.Dir(filepath.Dir(dest))
	}
	return fi.Size(), true
}

// waitInFlight waits while a prefetch is writing name, as long as it makes
// progress: finishing its download is quicker than starting a second one.
// It reports whether there was one to wait for.
func waitInFlight(dir, name string) bool {
	tmp := filepath.Join(dir, "."+name+".tmp")
	deadline := time.Now().Add(time.Minute)
	waited := false
	for i := 0; time.Now().Before(deadline); i++ {
		fi, err := os.Stat(tmp)
		if err != nil {
			return waited
		}
		if time.Since(fi.ModTime()) > 5*time.Second {
			return false // stalled or abandoned
		}
		// Every downloader (a prefetch, a restore's bulk download) holds
		// the directory's lock: a temporary file without one is what a
		// killed downloader left, not worth waiting for.
		if i%32 == 0 && !downloaderAlive(dir) {
			return false
		}
		waited = true
		time.Sleep(3 * time.Millisecond)
	}
	return false
}

// downloaderAlive reports whether a process holds dir's download lock.
// Probing with a shared lock could make a prefetch starting at this very
// moment give up; the next wal-fetch starts another.
func downloaderAlive(dir string) bool {
	f, err := os.Open(filepath.Join(dir, ".lock"))
	if err != nil {
		return false
	}
	defer f.Close()
	if syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB) != nil {
		return true
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false
}

// PrefetchOptions configures a background prefetch run.
type PrefetchOptions struct {
	After       string // the segment just fetched; prefetch starts after it
	Count       int
	Dir         string
	SegmentSize int64
	Concurrency int
	Logger      *slog.Logger
}

// Prefetch fetches up to Count segments following After on its timeline
// into Dir. Only one prefetch runs per directory at a time (flock); a second
// one returns at once. It stops at the first segment not yet archived.
func Prefetch(ctx context.Context, r *repo.Repository, o PrefetchOptions) error {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	after, err := pg.ParseWALFileName(o.After)
	if err != nil || after.Kind != pg.KindSegment {
		return fmt.Errorf("prefetch: %q is not a WAL segment name", o.After)
	}
	if !pg.ValidSegmentSize(o.SegmentSize) {
		return fmt.Errorf("prefetch: invalid segment size %d", o.SegmentSize)
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return fmt.Errorf("prefetch: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(o.Dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("prefetch: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		log.Debug("another prefetch is running")
		return nil
	}
	cleanPrefetchDir(o.Dir, after, o.SegmentSize)

	want := make([]pg.WALFile, 0, o.Count)
	next := after
	for i := 0; i < o.Count; i++ {
		next = next.NextSegment(o.SegmentSize)
		if _, _, ok := prefetchedName(o.Dir, next.Name); !ok {
			want = append(want, next)
		}
	}
	// Fetch in parallel; a missing segment ends the useful range, so later
	// ones are abandoned (their context is cancelled).
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu      sync.Mutex
		missing = -1
		wg      sync.WaitGroup
		sem     = make(chan struct{}, max(o.Concurrency, 1))
	)
	for i, wf := range want {
		sem <- struct{}{}
		mu.Lock()
		stop := missing >= 0 && i > missing
		mu.Unlock()
		if stop || ctx.Err() != nil {
			<-sem
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			err := prefetchOne(ctx, r, wf, o.Dir)
			if err != nil {
				mu.Lock()
				if missing < 0 || i < missing {
					missing = i
				}
				mu.Unlock()
				if !errors.Is(err, ErrWALNotFound) {
					log.Warn("prefetch failed", "file", wf.Name, "err", err)
				}
			}
		}()
	}
	wg.Wait()
	return nil
}

func prefetchOne(ctx context.Context, r *repo.Repository, wf pg.WALFile, dir string) error {
	// The temporary file exists before the download starts, so wal-fetch
	// knows to wait for it instead of fetching the same segment again.
	tmp := filepath.Join(dir, "."+wf.Name+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	obj, err := r.FetchWAL(ctx, wf)
	if err != nil {
		f.Close()
		os.Remove(tmp)
		if errors.Is(err, repo.ErrNotFound) {
			return ErrWALNotFound
		}
		return err
	}
	defer obj.Close()
	h, err := obj.Decode(chunkedWriter{f: f})
	if err == nil {
		// Synced before it gets its final name, so wal-fetch can hand it to
		// PostgreSQL with a rename and no second read.
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, wf.Name+"."+hex.EncodeToString(h.SHA256[:])))
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// cleanPrefetchDir removes segments recovery has moved past, leftovers of
// interrupted fetches (a dead bulk download's plan among them: it runs
// under the lock this caller holds), and anything older than an hour, except the
// segments of a restore's bulk download (bulkMarker) until recovery has
// passed its last one.
func cleanPrefetchDir(dir string, current pg.WALFile, segSize int64) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	bulkLast, bulk := readBulkMarker(dir)
	if bulk && bulkLast.SegNo(segSize) <= current.SegNo(segSize) {
		os.Remove(filepath.Join(dir, bulkMarker))
		bulk = false
	}
	cutoff := time.Now().Add(-time.Hour)
	for _, e := range entries {
		n := e.Name()
		if n == ".lock" || n == bulkMarker || n == "prefetch.log" || n == bulkLog {
			continue
		}
		stale := strings.HasSuffix(n, ".tmp") || n == bulkPlanFile
		if fi, err := e.Info(); err == nil && fi.ModTime().Before(cutoff) && !bulk {
			stale = true
		}
		if len(n) > 24 {
			if wf, err := pg.ParseWALFileName(n[:24]); err == nil && wf.SegNo(segSize) <= current.SegNo(segSize) {
				stale = true
			}
		}
		if stale {
			os.Remove(filepath.Join(dir, n))
		}
	}
}

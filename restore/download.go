package restore

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/pgkeep/pgkeep/repo"
)

// jobPlainSize bounds the restored bytes of one download job.
const jobPlainSize = 32 << 20

// writeChunk is the size of each write into a restored file. One 4 MiB
// write makes the kernel put it in large page-cache folios, and on a VM
// whose host has reclaimed free memory (free page reporting) every large
// folio's first touch faults into the host: measured, whole-block writes
// spent 2-3x the kernel time of 256 KiB writes, and restore ran at half
// pgBackRest's speed in bench/backup.sh instead of 1.5x it.
const writeChunk = 256 << 10

// writeChunked writes p at off in writeChunk pieces.
func writeChunked(f *os.File, p []byte, off int64) error {
	for i := 0; i < len(p); i += writeChunk {
		if _, err := f.WriteAt(p[i:min(i+writeChunk, len(p))], off+int64(i)); err != nil {
			return err
		}
	}
	return nil
}

type fileBlock struct {
	file *repo.File
	ref  repo.BlockRef
}

// fetchBlocks downloads the blocks of files, pack by pack: a whole pack in
// one request when all of it is needed, else ranges of adjacent blocks.
func fetchBlocks(ctx context.Context, r *repo.Repository, m *repo.Manifest, files []*repo.File, pgdata string, workers int, prog Progress) (int64, int64, error) {
	byPack := map[int][]fileBlock{}
	for _, f := range files {
		for _, b := range f.Refs() {
			byPack[b.Pack] = append(byPack[b.Pack], fileBlock{f, b})
		}
	}
	type job struct {
		pack   int
		blocks []fileBlock
	}
	var jobs []job
	for p, bl := range byPack {
		if p < 0 || p >= len(m.Packs) {
			return 0, 0, fmt.Errorf("manifest names pack %d of %d", p, len(m.Packs))
		}
		// Blocks of one chunk (format 3) share its offset: keep them
		// together, so the chunk is read and decoded once.
		sort.Slice(bl, func(i, j int) bool {
			if bl[i].ref.Offset != bl[j].ref.Offset {
				return bl[i].ref.Offset < bl[j].ref.Offset
			}
			return bl[i].ref.ChunkOffset < bl[j].ref.ChunkOffset
		})
		// Split into runs of adjacent blocks (gaps under 1 MiB are read
		// through), and runs into jobs of at most jobPlainSize restored
		// bytes: a pack of well-compressed data holds a GiB or more, and
		// one job per pack would leave the other workers idle.
		start, plain := 0, int64(0)
		for i := 1; i <= len(bl); i++ {
			plain += bl[i-1].ref.Size
			sameChunk := i < len(bl) && bl[i].ref.Offset == bl[i-1].ref.Offset
			if i == len(bl) || !sameChunk && (bl[i].ref.Offset-(bl[i-1].ref.Offset+bl[i-1].ref.Length) > 1<<20 || plain >= jobPlainSize) {
				jobs = append(jobs, job{p, bl[start:i]})
				start, plain = i, 0
			}
		}
	}
	sort.Slice(jobs, func(i, j int) bool {
		if jobs[i].pack != jobs[j].pack {
			return jobs[i].pack < jobs[j].pack
		}
		return jobs[i].blocks[0].ref.Offset < jobs[j].blocks[0].ref.Offset
	})
	lanes := newLanes(len(jobs), func(i int) string { return jobs[i].blocks[0].file.Path })
	var downloaded, written atomic.Int64
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lane := ""
			for ctx.Err() == nil {
				i, ok := lanes.next(&lane)
				if !ok {
					return
				}
				j := jobs[i]
				pack := m.Packs[j.pack]
				first := j.blocks[0].ref.Offset
				last := j.blocks[len(j.blocks)-1].ref
				length := last.Offset + last.Length - first
				err := fetchRun(ctx, r, pack.Name, first, length, pack.Size, j.blocks, m.Format < 3, pgdata, &downloaded, &written, prog)
				lanes.done(lane)
				if err != nil {
					cancel(err)
				}
			}
		}()
	}
	wg.Wait()
	return downloaded.Load(), written.Load(), context.Cause(ctx)
}

// lanes hands out restore jobs so that workers write different files
// while they can. Buffered writes to one file serialize on its inode lock,
// and a worker waiting for it spins: with two workers on one 1 GiB file,
// perf showed 17 % of restore's CPU in rwsem_spin_on_owner. A worker keeps
// to its file (its lane) in job order; when that is done it takes the
// first file in job order that has jobs left and nobody writes, and only
// shares a file when no other is left. Each call costs about the number of
// workers, not of files.
type lanes struct {
	mu     sync.Mutex
	queue  map[string][]int // file -> its jobs, in job order
	order  []string         // files by first job; order[:cursor] are done
	cursor int
	active map[string]int // file -> workers writing it
}

func newLanes(n int, file func(int) string) *lanes {
	l := &lanes{queue: map[string][]int{}, active: map[string]int{}}
	for i := range n {
		f := file(i)
		if _, ok := l.queue[f]; !ok {
			l.order = append(l.order, f)
		}
		l.queue[f] = append(l.queue[f], i)
	}
	return l
}

// next returns the next job for a worker whose lane is *lane, updating it.
func (l *lanes) next(lane *string) (int, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	pick := ""
	if len(l.queue[*lane]) > 0 && l.active[*lane] == 0 {
		pick = *lane
	} else {
		for l.cursor < len(l.order) && len(l.queue[l.order[l.cursor]]) == 0 {
			l.cursor++
		}
		shared := ""
		for _, f := range l.order[l.cursor:] {
			if len(l.queue[f]) == 0 {
				continue
			}
			if shared == "" {
				shared = f
			}
			if l.active[f] == 0 {
				pick = f
				break
			}
		}
		if pick == "" {
			pick = shared
		}
	}
	if pick == "" {
		return 0, false
	}
	i := l.queue[pick][0]
	l.queue[pick] = l.queue[pick][1:]
	l.active[pick]++
	*lane = pick
	return i, true
}

// done marks the worker's current job on lane finished.
func (l *lanes) done(lane string) {
	l.mu.Lock()
	l.active[lane]--
	l.mu.Unlock()
}

func fetchRun(ctx context.Context, r *repo.Repository, packName string, first, length, packSize int64, blocks []fileBlock, exact bool,
	pgdata string, downloaded, written *atomic.Int64, prog Progress) error {
	rc, err := r.ReadPack(ctx, packName, first, length, packSize)
	if err != nil {
		return fmt.Errorf("read %s: %w", packName, err)
	}
	defer rc.Close()
	br := bufio.NewReaderSize(rc, 1<<20)
	pos := first
	var buf, plainBuf []byte
	// Blocks of one file are mostly adjacent in a pack: keep its file
	// open across them instead of an open and close per block.
	var (
		open     *os.File
		openPath string
	)
	// Writeback is started (sync_file_range) per span of the file written,
	// not per write: composite blocks (docs/format.md) make many small
	// writes, and the call per write cost more than the write.
	var spanLo, spanHi int64
	startWriteback := func() {
		if open != nil && spanHi > spanLo {
			// Advisory: errors show at syncfs.
			unix.SyncFileRange(int(open.Fd()), spanLo, spanHi-spanLo, unix.SYNC_FILE_RANGE_WRITE)
		}
		spanLo, spanHi = 0, 0
	}
	wrote := func(off, n int64) {
		if spanHi > spanLo && (off < spanLo || off > spanHi+1<<20 || spanHi-spanLo >= 4<<20) {
			startWriteback()
		}
		if spanHi == spanLo {
			spanLo, spanHi = off, off+n
			return
		}
		spanHi = max(spanHi, off+n)
	}
	closeOpen := func() error {
		if open == nil {
			return nil
		}
		startWriteback()
		err := open.Close()
		open = nil
		if err != nil {
			return fmt.Errorf("write %s: %w", openPath, err)
		}
		return nil
	}
	defer closeOpen()
	// Neighbouring blocks of one object that are neighbours in one file
	// too (a full's chunk is 1 MiB of one file in 32 KiB blocks) are
	// written with one pwrite and one sync_file_range: per block, those
	// two calls were 65 % of a restore's CPU time (bench/incr.sh profile).
	var (
		pend      fileBlock // the first block of the pending write
		pendData  []byte    // its bytes, a slice of the decoded object
		pendValid bool
	)
	flush := func() error {
		if !pendValid {
			return nil
		}
		pendValid = false
		b, plain := pend, pendData
		if open == nil || openPath != b.file.Path {
			if err := closeOpen(); err != nil {
				return err
			}
			f, err := os.OpenFile(filepath.Join(pgdata, filepath.FromSlash(b.file.Path)), os.O_WRONLY, 0)
			if err != nil {
				return fmt.Errorf("write %s: %w", b.file.Path, err)
			}
			open, openPath = f, b.file.Path
		}
		if err := writeChunked(open, plain, b.ref.FileOffset); err != nil {
			return fmt.Errorf("write %s: %w", b.file.Path, err)
		}
		// Start writeback soon, so the final syncfs does not wait for the
		// whole restore's dirty pages at once (PostgreSQL's *_flush_after
		// does the same).
		wrote(b.ref.FileOffset, int64(len(plain)))
		written.Add(int64(len(plain)))
		if prog != nil {
			prog.Add(int64(len(plain)))
		}
		return nil
	}
	// writeBlock writes block b, bytes [ChunkOffset, ChunkOffset+Size) of
	// the decoded object obj (all of it before format 3), into its file:
	// it joins the pending write when it continues it in both the object
	// and the file, else the pending write is flushed first. The caller
	// flushes before obj's buffer is reused.
	writeBlock := func(b fileBlock, obj []byte) error {
		end := b.ref.ChunkOffset + b.ref.Size
		if b.ref.ChunkOffset < 0 || end > int64(len(obj)) || exact && end != int64(len(obj)) {
			return fmt.Errorf("%s: block at %d (%s): %w: size %d, manifest says %d at %d", b.file.Path, b.ref.FileOffset, packName, repo.ErrCorrupt, len(obj), b.ref.Size, b.ref.ChunkOffset)
		}
		if pendValid && pend.file == b.file && pend.ref.Offset == b.ref.Offset &&
			pend.ref.ChunkOffset+int64(len(pendData)) == b.ref.ChunkOffset &&
			pend.ref.FileOffset+int64(len(pendData)) == b.ref.FileOffset {
			pendData = obj[pend.ref.ChunkOffset:end]
			return nil
		}
		if err := flush(); err != nil {
			return err
		}
		pend, pendData, pendValid = b, obj[b.ref.ChunkOffset:end], true
		return nil
	}
	var plain []byte
	chunkAt := int64(-1) // pack offset of the object decoded into plain
	for _, b := range blocks {
		if b.ref.Offset == chunkAt {
			// Another block of the chunk just decoded.
			if err := writeBlock(b, plain); err != nil {
				return err
			}
			continue
		}
		if skip := b.ref.Offset - pos; skip > 0 {
			if _, err := io.CopyN(io.Discard, br, skip); err != nil {
				return fmt.Errorf("read %s: %w: %v", packName, repo.ErrCorrupt, err)
			}
			downloaded.Add(skip)
		}
		// The pending write may be a slice of the last object's buffer.
		if err := flush(); err != nil {
			return err
		}
		if int64(cap(buf)) < b.ref.Length {
			buf = make([]byte, b.ref.Length)
		}
		buf = buf[:b.ref.Length]
		if _, err := io.ReadFull(br, buf); err != nil {
			return fmt.Errorf("%s: block at %d of %s: %w: %v", b.file.Path, b.ref.FileOffset, packName, repo.ErrCorrupt, err)
		}
		downloaded.Add(b.ref.Length)
		pos = b.ref.Offset + b.ref.Length
		// Trust the zstd frames' own checksums (verify re-checks SHA-256);
		// decode into one buffer reused across the run's blocks.
		plain, _, err = r.DecodeBlock(plainBuf, buf)
		if err != nil {
			return fmt.Errorf("%s: block at %d (%s): %w", b.file.Path, b.ref.FileOffset, packName, err)
		}
		plainBuf = plain[:0]
		chunkAt = b.ref.Offset
		if err := writeBlock(b, plain); err != nil {
			return err
		}
	}
	if err := flush(); err != nil {
		return err
	}
	return closeOpen()
}

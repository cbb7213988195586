package archive

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
)

// copier runs the block pipeline: workers read, check, compress and encrypt
// blocks; writers append them to packs streamed to storage.
type copier struct {
	r         *repo.Repository
	o         BackupOptions
	id        string
	log       *slog.Logger
	startLSN  pg.LSN
	checksums bool

	// ref is the reference backup's manifest (nil for a full backup);
	// refFiles indexes its files by path. skipUnread lets files whose size
	// and mtime match be taken from ref without reading them (--type incr).
	ref        *repo.Manifest
	refFiles   map[string]*repo.File
	skipUnread bool
	refCutoff  int64 // Unix ns: only files older than this are taken unread
	// refStartLSN is the reference's start: no page of a file taken unread
	// may be newer (crossCheckLSN).
	refStartLSN pg.LSN
	stats       captureStats

	mu      sync.Mutex
	files   []repo.File
	blocks  [][]repo.BlockRef // per file, by block index
	foreign [][]string        // per file and block: the reference's pack name of a reused block, "" if stored here
	hashes  [][][32]byte
	vanish  []bool
	packs   []repo.Pack
	packSeq atomic.Int64

	// free holds encoded-block buffers for reuse: a block's object is built
	// in one (repo.Codec.EncodeBlock) and the buffer comes back once a
	// writer has stored it, so blocks seldom allocate and the memory in use
	// stays at about the blocks in flight.
	free chan []byte
}

type blockJob struct {
	file  int
	index int
	src   *sourceFile
	off   int64
	len   int64
	// ref is the reference's block at this offset, if it can be reused
	// when the content's SHA-256 matches.
	ref *repo.BlockRef
	// refPack is the pack name ref lives in.
	refPack string
}

type encodedBlock struct {
	data []byte
	done func(pack int, offset int64)
}

var plainPool = sync.Pool{}

func (c *copier) run(ctx context.Context, files []sourceFile) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	c.files = make([]repo.File, len(files))
	c.blocks = make([][]repo.BlockRef, len(files))
	c.hashes = make([][][32]byte, len(files))
	c.foreign = make([][]string, len(files))
	c.vanish = make([]bool, len(files))
	var total int64
	var jobs []blockJob
	for i := range files {
		f := &files[i]
		c.files[i] = repo.File{Path: f.Rel, Mode: uint32(f.Mode), MTime: f.MTime}
		rf := c.refFiles[f.Rel]
		if c.takeUnread(f, rf) {
			if err := c.reuseFile(i, f, rf); err != nil {
				return err
			}
			continue
		}
		total += f.Size
		n := int((f.Size + c.o.BlockSize - 1) / c.o.BlockSize)
		c.blocks[i] = make([]repo.BlockRef, n)
		c.hashes[i] = make([][32]byte, n)
		c.foreign[i] = make([]string, n)
		for b := 0; b < n; b++ {
			j := blockJob{file: i, index: b, src: f, off: int64(b) * c.o.BlockSize, len: min(c.o.BlockSize, f.Size-int64(b)*c.o.BlockSize)}
			j.ref, j.refPack = c.refBlock(rf, b, j.off)
			jobs = append(jobs, j)
		}
	}
	c.stats.read.Store(total)
	if c.o.Progress != nil {
		c.o.Progress.Start(total)
		defer c.o.Progress.Finish()
	}

	jobCh := make(chan blockJob)
	blockCh := make(chan encodedBlock, c.o.Writers)
	// One buffer per worker, per queued block and per writer.
	c.free = make(chan []byte, c.o.Workers+2*c.o.Writers)
	var workers, writers sync.WaitGroup
	for w := 0; w < c.o.Workers; w++ {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for j := range jobCh {
				if err := c.doBlock(ctx, j, blockCh); err != nil {
					cancel(err)
				}
			}
		}()
	}
	for w := 0; w < c.o.Writers; w++ {
		writers.Add(1)
		go func() {
			defer writers.Done()
			if err := c.writePacks(ctx, blockCh); err != nil {
				cancel(err)
			}
		}()
	}
feed:
	for _, j := range jobs {
		select {
		case jobCh <- j:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobCh)
	workers.Wait()
	close(blockCh)
	writers.Wait()
	if err := context.Cause(ctx); err != nil {
		return err
	}
	return nil
}

// doBlock reads, verifies and encodes one block and hands it to a writer.
func (c *copier) doBlock(ctx context.Context, j blockJob, out chan<- encodedBlock) error {
	if ctx.Err() != nil {
		return nil
	}
	f, err := os.Open(j.src.Abs)
	if os.IsNotExist(err) {
		c.markVanished(j.file)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", j.src.Rel, err)
	}
	defer f.Close()
	buf, _ := plainPool.Get().([]byte)
	if int64(cap(buf)) < j.len {
		buf = make([]byte, c.o.BlockSize)
	}
	buf = buf[:j.len]
	defer plainPool.Put(buf[:0]) //nolint:staticcheck // slices are fine in a pool here
	n, err := f.ReadAt(buf, j.off)
	if err != nil && err != io.EOF {
		return fmt.Errorf("read %s: %w", j.src.Rel, err)
	}
	buf = buf[:n] // the file may have shrunk; WAL replay restores it
	if c.checksums {
		if err := c.checkPages(f, j, buf); err != nil {
			if !c.o.ChecksumWarnOnly {
				return err
			}
			c.log.Warn("checksum failure", "err", err)
		}
	}
	if j.ref != nil && int64(n) == j.ref.Size {
		// Unchanged since the reference: list the reference's block.
		sum := sha256.Sum256(buf)
		if hex.EncodeToString(sum[:]) == j.ref.SHA256 {
			c.mu.Lock()
			c.blocks[j.file][j.index] = *j.ref
			c.foreign[j.file][j.index] = j.refPack
			c.hashes[j.file][j.index] = sum
			c.mu.Unlock()
			if c.o.Progress != nil {
				c.o.Progress.Add(j.len)
			}
			return nil
		}
	}
	var dst []byte
	select {
	case dst = <-c.free:
	default:
	}
	enc, sum, err := c.r.EncodeBlock(dst[:0], buf)
	if err != nil {
		return fmt.Errorf("encode %s: %w", j.src.Rel, err)
	}
	plainLen := int64(n)
	done := func(pack int, offset int64) {
		c.mu.Lock()
		c.blocks[j.file][j.index] = repo.BlockRef{Pack: pack, Offset: offset, Length: int64(len(enc)), FileOffset: j.off, Size: plainLen,
			SHA256: hex.EncodeToString(sum[:])}
		c.hashes[j.file][j.index] = sum
		c.mu.Unlock()
	}
	if c.o.Progress != nil {
		c.o.Progress.Add(j.len)
	}
	select {
	case out <- encodedBlock{data: enc, done: done}:
		return nil
	case <-ctx.Done():
		return nil
	}
}

// release gives an encoded block's buffer back for reuse. Small ones (a
// small file's) are left to the GC; the others keep the size the content
// needed, so they stay small for compressible data.
func (c *copier) release(b []byte) {
	if int64(cap(b)) < c.o.BlockSize/4 {
		return
	}
	select {
	case c.free <- b[:0]:
	default:
	}
}

func (c *copier) markVanished(i int) {
	c.mu.Lock()
	c.vanish[i] = true
	c.mu.Unlock()
}

// checkPages verifies the data checksum of every page of a relation file
// block. Pages changed after the backup started may be torn by a
// concurrent write (WAL replay repairs them) and are not checked; a failing
// page is read once more before it counts as corrupt.
func (c *copier) checkPages(f *os.File, j blockJob, buf []byte) error {
	segno, ok := pg.ChecksummedFile(j.src.Rel)
	if !ok {
		return nil
	}
	for p := 0; p+pg.BlockSize <= len(buf); p += pg.BlockSize {
		page := buf[p : p+pg.BlockSize]
		if pg.IsNewPage(page) {
			continue
		}
		blk := segno*pg.RelSegBlocks + uint32((j.off+int64(p))/pg.BlockSize)
		h := pg.ParsePageHeader(page)
		if h.LSN >= c.startLSN || pg.PageChecksum(page, blk) == h.Checksum {
			continue
		}
		if _, err := f.ReadAt(page, j.off+int64(p)); err != nil && err != io.EOF {
			return fmt.Errorf("re-read %s: %w", j.src.Rel, err)
		}
		h = pg.ParsePageHeader(page)
		if pg.IsNewPage(page) || h.LSN >= c.startLSN || pg.PageChecksum(page, blk) == h.Checksum {
			continue
		}
		return fmt.Errorf("%w in %s block %d (stored %d, computed %d)", ErrChecksum, j.src.Rel,
			(j.off+int64(p))/pg.BlockSize, h.Checksum, pg.PageChecksum(page, blk))
	}
	return nil
}

// writePacks appends blocks to packs streamed to storage, closing a pack
// once it reaches PackSize.
func (c *copier) writePacks(ctx context.Context, in <-chan encodedBlock) error {
	var (
		pw *repo.PackWriter
		n  int
	)
	closePack := func() error {
		if pw == nil {
			return nil
		}
		p, err := pw.Close()
		pw = nil
		if err != nil {
			return err
		}
		c.mu.Lock()
		for len(c.packs) <= n {
			c.packs = append(c.packs, repo.Pack{})
		}
		c.packs[n] = p
		c.mu.Unlock()
		return nil
	}
	for b := range in {
		if ctx.Err() != nil {
			continue // drain so workers never block
		}
		if pw == nil {
			n = int(c.packSeq.Add(1) - 1)
			pw = c.r.CreatePack(ctx, c.id, n)
		}
		off := pw.Size()
		if _, err := pw.Write(b.data); err != nil {
			// The upload's error (ENOSPC, connection refused), not the
			// closed pipe's.
			pw = nil
			return err
		}
		b.done(n, off)
		c.release(b.data) // the pipe's reader has consumed it
		if pw.Size() >= c.o.PackSize {
			if err := closePack(); err != nil {
				return err
			}
		}
	}
	if ctx.Err() != nil && pw != nil {
		pw.Abort(ctx.Err())
		return nil
	}
	return closePack()
}

// result assembles the manifest's file and pack lists.
func (c *copier) result() ([]repo.File, []repo.Pack) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var files []repo.File
	packs := append([]repo.Pack(nil), c.packs...)
	foreignIdx := map[string]int{}
	for i, f := range c.files {
		if c.vanish[i] {
			continue
		}
		var size int64
		var refs []repo.BlockRef
		h := sha256.New()
		for b, ref := range c.blocks[i] {
			if ref.Size == 0 {
				continue
			}
			if name := c.foreign[i][b]; name != "" {
				// A reused block: renumber its pack into this manifest's table.
				n, ok := foreignIdx[name]
				if !ok {
					n = len(packs)
					foreignIdx[name] = n
					packs = append(packs, c.ref.Packs[ref.Pack])
				}
				ref.Pack = n
			}
			refs = append(refs, ref)
			h.Write(c.hashes[i][b][:])
			size = ref.FileOffset + ref.Size
		}
		f.Blocks = refs
		f.Size = size
		f.SHA256 = hex.EncodeToString(h.Sum(nil))
		files = append(files, f)
	}
	return files, packs
}

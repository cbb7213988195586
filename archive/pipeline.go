package archive

import (
	"bytes"
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
	// refStopLSN is the reference's stop: no page of a file taken unread
	// may be newer than it and older than this backup's start
	// (crossCheckLSN).
	refStopLSN pg.LSN
	stats      captureStats
	mapState   // map mode (mapmode.go)
	// resume holds the blocks interrupted backups stored (resume.go).
	resume resumeSet

	mu           sync.Mutex
	files        []repo.File
	blocks       [][]repo.BlockRef // per file, by block index
	foreign      [][]foreignPack   // per file and block: the pack of a reused block (in foreignNames), 0 if stored here
	foreignNames foreignTable
	// partPacks are, for each composite block (by file and block index),
	// its parts' packs as foreign has them (0 for this backup's).
	partPacks map[[2]int][]foreignPack
	vanish    []bool
	packs     []repo.Pack
	packSeq   atomic.Int64

	// free holds encoded-block buffers for reuse: a block's object is built
	// in one (repo.Codec.EncodeBlock) and the buffer comes back once a
	// writer has stored it, so blocks seldom allocate and the memory in use
	// stays at about the blocks in flight.
	free chan []byte
}

// blockJob is a run of consecutive blocks of one file: one block of
// BlockSize for files stored in whole blocks, or up to a chunk's worth of
// small blocks (format 3), whose changed ones are stored together as one
// object.
type blockJob struct {
	file  int
	index int // of the run's first block
	src   *sourceFile
	off   int64
	len   int64
	bs    int64 // block size of the file
	// rf is the reference's entry of the file (nil if none): a block whose
	// SHA-256 equals the reference's block at the same offset is reused.
	rf *repo.File
	// want, when set (map mode), says which of the run's blocks to read;
	// the others are the reference's already.
	want []bool
	// fr is map mode's decision for the file (nil in hash mode): the
	// pages its maps name, so a block read for them can store only those
	// (composite.go).
	fr *fileReads
}

type encodedBlock struct {
	data []byte
	path string
	// done records where the block was stored and returns its block
	// references for the pack's index.
	done func(pack int, offset int64) []repo.BlockRef
}

var plainPool = sync.Pool{}

func (c *copier) run(ctx context.Context, files []sourceFile) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	c.files = make([]repo.File, len(files))
	c.blocks = make([][]repo.BlockRef, len(files))
	c.foreign = make([][]foreignPack, len(files))
	c.vanish = make([]bool, len(files))
	c.partPacks = map[[2]int][]foreignPack{}
	var total int64
	var jobs []blockJob
	for i := range files {
		f := &files[i]
		c.files[i] = repo.File{Path: f.Rel, Mode: uint32(f.Mode), MTime: f.MTime}
		rf := c.refFiles[f.Rel]
		if fr := c.plan.file(i); fr != nil {
			n, err := c.takeMapped(i, f, rf, fr, &jobs)
			if err != nil {
				return err
			}
			total += n
			continue
		}
		if c.takeUnread(f, rf) {
			if err := c.reuseFile(i, f, rf); err != nil {
				return err
			}
			continue
		}
		total += f.Size
		bs, run, small := fileCut(f.Size, rf, c.o)
		c.files[i].BlockSize = small
		n := int((f.Size + bs - 1) / bs)
		c.blocks[i] = make([]repo.BlockRef, n)
		c.foreign[i] = make([]foreignPack, n)
		for b := 0; b < n; b += int(run) {
			off := int64(b) * bs
			jobs = append(jobs, blockJob{file: i, index: b, src: f, off: off, len: min(run*bs, f.Size-off), bs: bs, rf: rf})
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
	n, read, err := c.readJob(f, j, buf)
	if err != nil {
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
	// Blocks unchanged since the reference list the reference's block; the
	// others are stored, together, as one object (a chunk when small).
	// stored is a block to store: whole (pieces nil), or as a composite
	// whose pieces with no ref are stored, in order, from chunkOffset on.
	type stored struct {
		index       int
		off, size   int64
		chunkOffset int64
		sum         []byte
		pieces      []piece
	}
	small := c.files[j.file].BlockSize > 0
	var changed []stored
	var chunkLen int64
	whole := true // the chunk is buf[:n] as read
	for k := 0; int64(k)*j.bs < int64(n); k++ {
		sub := buf[int64(k)*j.bs : min(int64(k+1)*j.bs, int64(n))]
		if j.want != nil && !j.want[k] {
			continue
		}
		idx, off := j.index+k, j.off+int64(k)*j.bs
		if j.fr != nil && idx < len(j.fr.read) && !j.fr.read[idx] && idx < len(j.rf.Blocks) && j.rf.Blocks[idx].Composite() {
			// Read with its dense window, unnamed by the maps, and with no
			// hash to compare: the reference's, as map mode takes it.
			c.mu.Lock()
			c.takeRefComposite(j.file, j.rf, idx)
			c.mu.Unlock()
			whole = false
			continue
		}
		sum := repo.BlockDigest(small, sub)
		if ref := c.refBlock(j.rf, idx, off); ref != nil && ref.Size == int64(len(sub)) && ref.Small() == small && bytes.Equal(sum, ref.DigestBytes()) {
			c.mu.Lock()
			c.blocks[j.file][idx] = *ref
			c.foreign[j.file][idx] = c.foreignNames.ofRef(c.ref.Packs, ref.Pack)
			c.mu.Unlock()
			whole = false
			continue
		}
		if c.audit != nil {
			c.auditChanged(j, idx, sub)
		}
		if pieces := c.split(j, idx, off, sub); pieces != nil {
			st := stored{index: idx, off: off, size: int64(len(sub)), chunkOffset: chunkLen, pieces: pieces}
			for _, p := range pieces {
				if p.ref == nil {
					chunkLen += p.hi - p.lo
				}
			}
			changed = append(changed, st)
			whole = false
			continue
		}
		if c.reuseInterrupted(j, idx, off, small, sum, int64(len(sub))) {
			whole = false
			continue
		}
		changed = append(changed, stored{index: idx, off: off, size: int64(len(sub)), chunkOffset: chunkLen, sum: sum})
		chunkLen += int64(len(sub))
	}
	if c.o.Progress != nil {
		c.o.Progress.Add(read)
	}
	if len(changed) == 0 {
		return nil
	}
	plain := buf[:n]
	if !whole || chunkLen != int64(n) {
		// Only some blocks (or pages) changed: the chunk is their
		// concatenation.
		plain = make([]byte, 0, chunkLen)
		for _, s := range changed {
			at := s.off - j.off
			if s.pieces == nil {
				plain = append(plain, buf[at:at+s.size]...)
				continue
			}
			for _, p := range s.pieces {
				if p.ref == nil {
					plain = append(plain, buf[at+p.lo:at+p.hi]...)
				}
			}
		}
	}
	var dst []byte
	select {
	case dst = <-c.free:
	default:
	}
	enc, err := c.r.EncodeBlock(dst[:0], plain)
	if err != nil {
		return fmt.Errorf("encode %s: %w", j.src.Rel, err)
	}
	done := func(pack int, offset int64) []repo.BlockRef {
		c.mu.Lock()
		defer c.mu.Unlock()
		refs := make([]repo.BlockRef, 0, len(changed))
		for _, s := range changed {
			if s.pieces != nil {
				refs = append(refs, c.storeComposite(j, s.index, s.off, s.size, s.chunkOffset, s.pieces, pack, offset, int64(len(enc)))...)
				continue
			}
			c.blocks[j.file][s.index] = repo.BlockRef{Pack: pack, Offset: offset, Length: int64(len(enc)), FileOffset: s.off, Size: s.size,
				ChunkOffset: s.chunkOffset}
			c.blocks[j.file][s.index].SetDigest(small, s.sum)
			refs = append(refs, c.blocks[j.file][s.index])
		}
		return refs
	}
	select {
	case out <- encodedBlock{data: enc, path: j.src.Rel, done: done}:
		return nil
	case <-ctx.Done():
		return nil
	}
}

// release gives an encoded block's buffer back for reuse. Small ones (a
// small file's) are left to the GC; the others keep the size the content
// needed, so they stay small for compressible data.
func (c *copier) release(b []byte) {
	if cap(b) < 64<<10 {
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

// readJob reads job j into buf (j.len bytes): all of it, or only the
// blocks j.want names, the rest zeroed (new pages to checkPages). It
// returns the bytes up to the end of the file or of the last block read,
// and how many it read.
func (c *copier) readJob(f *os.File, j blockJob, buf []byte) (n, read int64, err error) {
	if j.want == nil {
		m, err := f.ReadAt(buf, j.off)
		if err != nil && err != io.EOF {
			return 0, 0, err
		}
		return int64(m), int64(m), nil
	}
	for k := 0; k < len(j.want); {
		lo := int64(k) * j.bs
		if !j.want[k] {
			clear(buf[lo:min(lo+j.bs, j.len)])
			k++
			continue
		}
		e := k + 1
		for e < len(j.want) && j.want[e] {
			e++
		}
		hi := min(int64(e)*j.bs, j.len)
		m, err := f.ReadAt(buf[lo:hi], j.off+lo)
		if err != nil && err != io.EOF {
			return 0, 0, err
		}
		read += int64(m)
		if n = lo + int64(m); n < hi {
			return n, read, nil // shrunk
		}
		k = e
	}
	return n, read, nil
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
		pw  *repo.PackWriter
		n   int
		idx repo.PackIndex // what the pack holds, for a backup that resumes this one
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
		idx.Pack = p
		err = c.r.WritePackIndex(ctx, c.id, n, idx)
		idx = repo.PackIndex{}
		return err
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
		idx.Add(b.path, b.done(n, off))
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

// sameAsReference is the reference's file map of file i when the file was
// read but every block of it is the reference's, in the same order: the
// map is named again instead of copied (--type checksum, a file whose
// mtime moved without a change). c.mu is held.
func (c *copier) sameAsReference(i int, f repo.File) *repo.MapRef {
	if c.ref == nil {
		return nil
	}
	rf := c.refFiles[f.Path]
	if rf == nil || rf.Map == nil || rf.BlockSize != f.BlockSize || len(rf.Blocks) != len(c.blocks[i]) {
		return nil
	}
	for b, ref := range c.blocks[i] {
		if !c.fromReference(i, b) || !repo.SameBlock(ref, c.ref.Packs, rf.Blocks[b], c.ref.Packs) {
			return nil
		}
	}
	return rf.Map
}

// result assembles the manifest's file, pack and file map lists (the
// maps are those of the reference that files taken unread name).
func (c *copier) result() ([]repo.File, []repo.Pack, []repo.Pack) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var files []repo.File
	packs := append([]repo.Pack(nil), c.packs...)
	var maps []repo.Pack
	packOf := make([]int, len(c.foreignNames.names)+1) // by foreignPack: index here, or -1
	for k := range packOf {
		packOf[k] = -1
	}
	mapSeen := map[string]bool{}
	refMaps := map[string]repo.Pack{}
	if c.ref != nil {
		for _, p := range c.ref.Maps {
			refMaps[p.Name] = p
		}
	}
	// renumber makes a reused block's (or part's) pack, fp, index this
	// manifest's pack table.
	renumber := func(ref *repo.BlockRef, fp foreignPack) {
		n := packOf[fp]
		if n < 0 {
			n = len(packs)
			packOf[fp] = n
			p, ok := c.resume.packs[c.foreignNames.name(fp)] // an interrupted backup's
			if !ok {
				p = c.ref.Packs[ref.Pack]
			}
			packs = append(packs, p)
		}
		ref.Pack = n
	}
	for i, f := range c.files {
		if c.vanish[i] {
			continue
		}
		var size int64
		refs := make([]repo.BlockRef, 0, len(c.blocks[i]))
		h := sha256.New()
		summed := true
		for b, ref := range c.blocks[i] {
			if ref.Size == 0 {
				continue
			}
			if ref.Composite() {
				ref = ref.Clone()
				for k, fp := range c.partPacks[[2]int{i, b}] {
					if fp != 0 {
						renumber(&ref.Parts[k], fp)
					}
				}
				summed = false // no hash of the whole block
			} else if fp := c.foreign[i][b]; fp != 0 {
				renumber(&ref, fp)
			}
			refs = append(refs, ref)
			// The file checksum is over the blocks' digests (each plain
			// block has one: stored, reused or the reference's, checked).
			h.Write(ref.DigestBytes())
			size = ref.FileOffset + ref.Size
		}
		rf := c.refFiles[f.Path]
		if f.Map == nil {
			if f.Map = c.sameAsReference(i, f); f.Map != nil {
				f.MapChain = rf.MapChain
			}
		}
		if f.Map == nil && rf != nil && rf.Map != nil && rf.BlockSize == f.BlockSize {
			// Read and changed: its new map may be a patch of the reference's.
			chain := make([]repo.Pack, len(rf.MapChain))
			for k, name := range rf.MapChain {
				chain[k] = refMaps[name]
			}
			f.Base = &repo.MapBase{Map: *rf.Map, Depth: rf.MapDepth, Blocks: rf.Blocks, Packs: c.ref.Packs, Chain: chain}
		}
		f.Blocks = refs
		f.Size = size
		for _, name := range f.MapChain {
			if !mapSeen[name] {
				mapSeen[name] = true
				maps = append(maps, refMaps[name])
			}
		}
		f.SHA256 = ""
		if summed {
			f.SHA256 = hex.EncodeToString(h.Sum(nil))
		}
		files = append(files, f)
	}
	return files, packs, maps
}

// chunkPlainSize is about how many plain bytes of small blocks are
// compressed and encrypted together as one object (a chunk): big enough
// for zstd's ratio and few objects, small enough that a restore of a few
// changed pages decodes little.
const chunkPlainSize = 1 << 20

// fileBlockSize is the small block size a file of size bytes is cut into
// (format 3), so a changed page re-stores about one block, not megabytes;
// 0 keeps whole blocks of max bytes (small files: one block each). Block
// sizes grow with the file, like pgBackRest's 8-88 KiB, to bound the
// number of block references a big file costs in the manifest.
func fileBlockSize(size, max int64) int64 {
	var bs int64
	switch {
	case size <= 1<<20:
		return 0
	case size < 16<<20:
		bs = 8 << 10
	case size < 128<<20:
		bs = 16 << 10
	default:
		bs = 32 << 10
	}
	if bs >= max {
		return 0
	}
	return bs
}

package archive

import (
	"sort"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
)

// Composite blocks (docs/format.md "Composite blocks"): map mode reads a
// stored block (up to 32 KiB) because the block maps name a page in it,
// but only the pages the maps name changed. Storing the whole block would
// re-store its unchanged pages with every incremental (100 row updates in
// pgbench scale 100: 0.77 MB stored for 205 changed pages); so the block
// becomes a composite of its changed pages, stored, and slices of the
// reference's stored copy for the others. A page is taken from the
// reference only when the page just read says it could not have changed
// since the reference's start: not named by the maps, not new (all
// zeros), and its LSN at or before the reference's start. Any other page
// is stored, and one the maps did not name whose LSN is inside the range
// is counted as a miss of the maps (a warning, and the backup stays
// correct because the page is stored).

// maxSplitShare: blocks of a file are split only while the maps name at
// most 1/maxSplitShare of its pages. bench/incr.sh, 1 % of pgbench_accounts'
// rows updated (the maps named 79 % of its pages): splitting every block
// stored 61.1 MB instead of 72.5, but the next restore took 3.2 times a
// full's and the backup's peak RSS rose from 112 to 158 MiB.
const maxSplitShare = 8

// piece is one part of a block being split: a slice of the reference's
// stored copy (ref set, with name its pack's name) or bytes [lo, hi) of
// the block just read, to be stored.
type piece struct {
	ref    *repo.BlockRef
	name   string
	lo, hi int64
	sum    []byte // a stored piece's xxh3-128
}

// split says how to store block idx of job j (at file offset off, content
// sub) as a composite: its pieces in file order, or nil when the block is
// stored whole (no page can be taken from the reference, or it is not a
// block map mode read for its mapped pages).
func (c *copier) split(j blockJob, idx int, off int64, sub []byte) []piece {
	fr := j.fr
	if c.plan == nil || fr == nil || j.rf == nil || idx >= len(j.rf.Blocks) || idx >= len(fr.read) || !fr.read[idx] {
		return nil
	}
	if int64(len(fr.mapped))*maxSplitShare > fr.pages {
		// Dense changes: most blocks would split, each restored as
		// several small writes and held as several parts, for a saving
		// that shrinks as more of each block changes.
		return nil
	}
	size := int64(len(sub))
	ref := &j.rf.Blocks[idx]
	if ref.FileOffset != off || ref.Size != size || size <= pg.BlockSize || size%pg.BlockSize != 0 ||
		(!ref.HasDigest() && !ref.Composite()) || (off+size)/pg.BlockSize > fr.explainFrom {
		return nil
	}
	first := uint32(off / pg.BlockSize)
	n := int(size / pg.BlockSize)
	k := sort.Search(len(fr.mapped), func(i int) bool { return fr.mapped[i] >= first })
	fromRef := make([]bool, n)
	any := false
	for p := range n {
		page := sub[int64(p)*pg.BlockSize : int64(p+1)*pg.BlockSize]
		mapped := k < len(fr.mapped) && fr.mapped[k] == first+uint32(p)
		if mapped {
			k++
			continue
		}
		if pg.IsNewPage(page) {
			continue
		}
		lsn := pg.ParsePageHeader(page).LSN
		if lsn > c.plan.from {
			if inRange(lsn, c.plan.from, c.plan.to) {
				c.plan.unmappedNew.Add(1)
			}
			continue
		}
		fromRef[p] = true
		any = true
	}
	if !any {
		return nil
	}
	var out []piece
	for p := 0; p < n; {
		e := p + 1
		for e < n && fromRef[e] == fromRef[p] {
			e++
		}
		lo, hi := int64(p)*pg.BlockSize, int64(e)*pg.BlockSize
		if fromRef[p] {
			out = append(out, c.refSlices(ref, off, lo, hi)...)
		} else {
			out = append(out, piece{lo: lo, hi: hi, sum: repo.BlockDigest(true, sub[lo:hi])})
		}
		p = e
	}
	c.plan.splitBlocks.Add(1)
	return out
}

// refSlices are the slices of the reference's block ref (at file offset
// off) holding its bytes [lo, hi): one slice of a plain block's object,
// or the parts of a composite one that overlap, cut to fit.
func (c *copier) refSlices(ref *repo.BlockRef, off, lo, hi int64) []piece {
	parts := []repo.BlockRef{*ref}
	if ref.Composite() {
		parts = ref.Parts
	}
	var out []piece
	for _, p := range parts {
		plo, phi := p.FileOffset-off, p.FileOffset-off+p.Size
		a, b := max(lo, plo), min(hi, phi)
		if a >= b {
			continue
		}
		s := repo.BlockRef{Pack: p.Pack, Offset: p.Offset, Length: p.Length, FileOffset: off + a, Size: b - a,
			ChunkOffset: p.ChunkOffset + (a - plo)}
		if a == plo && b == phi && p.Small() && ref.Composite() {
			s.Sum, s.Hash = p.Sum, p.Hash // a whole part keeps its hash
		}
		out = append(out, piece{ref: &s, name: c.ref.Packs[p.Pack].Name, lo: a, hi: b})
	}
	return out
}

// storeComposite records block idx of file j.file (size bytes at file
// offset off) as the composite of pieces, whose stored ones are plain
// bytes chunkOffset on, in order, of the object [offset, offset+length)
// of own pack pack. It returns the stored pieces as blocks, for the
// pack's index. c.mu is held.
func (c *copier) storeComposite(j blockJob, idx int, off, size, chunkOffset int64, pieces []piece, pack int, offset, length int64) []repo.BlockRef {
	b := repo.BlockRef{FileOffset: off, Size: size, Parts: make([]repo.BlockRef, 0, len(pieces))}
	fps := make([]foreignPack, len(pieces))
	var stored []repo.BlockRef
	at := chunkOffset
	for k, p := range pieces {
		if p.ref != nil {
			b.Parts = append(b.Parts, *p.ref)
			fps[k] = c.foreignNames.of(p.name)
			continue
		}
		part := repo.BlockRef{Pack: pack, Offset: offset, Length: length, FileOffset: off + p.lo, Size: p.hi - p.lo, ChunkOffset: at}
		part.SetDigest(true, p.sum)
		at += p.hi - p.lo
		b.Parts = append(b.Parts, part)
		stored = append(stored, part)
	}
	c.blocks[j.file][idx] = b
	c.foreign[j.file][idx] = 0
	c.partPacks[[2]int{j.file, idx}] = fps
	return stored
}

// takeRefComposite lists block b of file i as the reference's composite
// block rf.Blocks[b]. c.mu is held or no worker runs.
func (c *copier) takeRefComposite(i int, rf *repo.File, b int) {
	ref := rf.Blocks[b].Clone()
	fps := make([]foreignPack, len(ref.Parts))
	for k, p := range ref.Parts {
		fps[k] = c.foreignNames.ofRef(c.ref.Packs, p.Pack)
	}
	c.blocks[i][b] = ref
	c.foreign[i][b] = 0
	c.partPacks[[2]int{i, b}] = fps
}

// fromReference reports whether block b of file i is the reference's (or
// an interrupted backup's) as it is: a plain block with a foreign pack,
// or a composite whose every part is foreign. c.mu is held.
func (c *copier) fromReference(i, b int) bool {
	if !c.blocks[i][b].Composite() {
		return c.foreign[i][b] != 0
	}
	for _, fp := range c.partPacks[[2]int{i, b}] {
		if fp == 0 {
			return false
		}
	}
	return true
}

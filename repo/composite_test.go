package repo

import (
	"testing"
)

// A composite block (format 7) is accepted only in its shape: parts that
// are plain, contiguous, add up to the block, name listed packs; no
// object or hash of its own; not below format 7. Refs flattens it.
func TestCompositeBlockChecks(t *testing.T) {
	id := "20261201T000000Z-aaaa"
	part := func(at, size int64) BlockRef {
		return BlockRef{Pack: 0, Offset: 100, Length: 500, FileOffset: at, Size: size, ChunkOffset: at}
	}
	mk := func(format int, edit func(b *BlockRef)) *Manifest {
		b := BlockRef{FileOffset: 0, Size: 32 << 10, Parts: []BlockRef{part(0, 8<<10), part(8<<10, 24<<10)}}
		if edit != nil {
			edit(&b)
		}
		return &Manifest{Summary: Summary{ID: id, Format: format}, BlockSize: 4 << 20,
			Packs: []Pack{{Name: PackName(id, 0), Size: 1000}},
			Files: []File{{Path: "base/1/1", Size: 40 << 10, BlockSize: 32 << 10,
				Blocks: []BlockRef{b, {Pack: 0, Offset: 600, Length: 300, FileOffset: 32 << 10, Size: 8 << 10}}}}}
	}
	m := mk(7, nil)
	if err := m.check(); err != nil {
		t.Fatalf("a sound composite: %v", err)
	}
	if !m.usesComposites() {
		t.Error("usesComposites is false")
	}
	if refs := m.Files[0].Refs(); len(refs) != 3 || refs[1].FileOffset != 8<<10 || refs[2].FileOffset != 32<<10 {
		t.Errorf("Refs %+v; want the two parts, then the plain block", refs)
	}
	for _, c := range []struct {
		what   string
		format int
		edit   func(b *BlockRef)
	}{
		{"in format 6", 6, nil},
		{"a gap between parts", 7, func(b *BlockRef) { b.Parts[1].FileOffset += 8 << 10; b.Parts[1].Size -= 8 << 10 }},
		{"parts shorter than the block", 7, func(b *BlockRef) { b.Parts[1].Size -= 1 }},
		{"a hash of its own", 7, func(b *BlockRef) { b.SetDigest(true, make([]byte, 16)) }},
		{"an object of its own", 7, func(b *BlockRef) { b.Length = 10 }},
		{"a nested composite", 7, func(b *BlockRef) { b.Parts[0].Parts = []BlockRef{part(0, 8<<10)} }},
		{"a part naming no listed pack", 7, func(b *BlockRef) { b.Parts[1].Pack = 3 }},
		{"a part with no object", 7, func(b *BlockRef) { b.Parts[0].Length = 0 }},
		{"larger than the file's block size", 7, func(b *BlockRef) { b.Size += 8 << 10; b.Parts[1].Size += 8 << 10 }},
	} {
		if err := mk(c.format, c.edit).check(); err == nil {
			t.Errorf("%s: accepted", c.what)
		}
	}
}

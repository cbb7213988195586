package repo

import "fmt"

// Composite blocks (manifest format 7, docs/format.md "Composite
// blocks"): when the WAL block maps say which pages of a block changed, an
// incremental stores only those pages and lists the block as parts: slices
// of stored objects in file order, the unchanged pages' slices pointing
// into the objects that already hold them. The block keeps its index in
// the file's list (so a file map patch still replaces it by index) but has
// no hash of its own: its unchanged pages were not read from the stored
// copy, so no hash of the whole stored content is known. A part may carry
// the xxh3-128 of its own content (a slice this backup stored).

// Composite reports whether b is made of parts.
func (b *BlockRef) Composite() bool { return len(b.Parts) > 0 }

// Refs is f's block list with each composite block replaced by its parts:
// every stored slice the file is rebuilt from, in file order. It is
// f.Blocks itself when no block is composite.
func (f *File) Refs() []BlockRef {
	n, composite := 0, false
	for i := range f.Blocks {
		if k := len(f.Blocks[i].Parts); k > 0 {
			n += k
			composite = true
		} else {
			n++
		}
	}
	if !composite {
		return f.Blocks
	}
	out := make([]BlockRef, 0, n)
	for _, b := range f.Blocks {
		if b.Composite() {
			out = append(out, b.Parts...)
		} else {
			out = append(out, b)
		}
	}
	return out
}

// EachObjectRef calls fn with every stored slice of blocks in place: each
// plain block, and each part of a composite one (whose own pack, offset
// and length are unused), so pack numbers and offsets can be translated.
func EachObjectRef(blocks []BlockRef, fn func(*BlockRef) error) error {
	for i := range blocks {
		b := &blocks[i]
		if !b.Composite() {
			if err := fn(b); err != nil {
				return err
			}
			continue
		}
		for j := range b.Parts {
			if err := fn(&b.Parts[j]); err != nil {
				return err
			}
		}
	}
	return nil
}

// Clone is b with its own copy of its parts, so translating the copy's
// pack numbers leaves b alone.
func (b BlockRef) Clone() BlockRef {
	if b.Parts != nil {
		b.Parts = append([]BlockRef(nil), b.Parts...)
	}
	return b
}

// SameBlock reports whether a, whose packs are numbered in aPacks, and b,
// in bPacks, name the same stored content the same way (plain fields,
// hashes and parts).
func SameBlock(a BlockRef, aPacks []Pack, b BlockRef, bPacks []Pack) bool {
	if len(a.Parts) != len(b.Parts) {
		return false
	}
	if !a.Composite() {
		return sameObjectRef(a, aPacks, b, bPacks)
	}
	if a.FileOffset != b.FileOffset || a.Size != b.Size {
		return false
	}
	for i := range a.Parts {
		if !sameObjectRef(a.Parts[i], aPacks, b.Parts[i], bPacks) {
			return false
		}
	}
	return true
}

func sameObjectRef(a BlockRef, aPacks []Pack, b BlockRef, bPacks []Pack) bool {
	if a.Pack < 0 || a.Pack >= len(aPacks) || b.Pack < 0 || b.Pack >= len(bPacks) || aPacks[a.Pack].Name != bPacks[b.Pack].Name {
		return false
	}
	return a.Offset == b.Offset && a.Length == b.Length && a.FileOffset == b.FileOffset && a.Size == b.Size &&
		a.ChunkOffset == b.ChunkOffset && a.SameDigest(b) && !a.Composite() && !b.Composite()
}

// checkComposite checks a composite block's shape: parts that are plain
// slices, contiguous from the block's file offset, adding up to its size;
// no object or hash of its own.
func (b *BlockRef) checkComposite() error {
	if b.Pack != 0 || b.Offset != 0 || b.Length != 0 || b.ChunkOffset != 0 || b.HasDigest() {
		return fmt.Errorf("composite block at %d has an object or hash of its own", b.FileOffset)
	}
	at := b.FileOffset
	for _, p := range b.Parts {
		if p.Composite() || p.Hash == HashSHA256 || p.FileOffset != at || p.Size <= 0 {
			return fmt.Errorf("composite block at %d: part %+v does not follow at %d", b.FileOffset, p, at)
		}
		at += p.Size
	}
	if at != b.FileOffset+b.Size {
		return fmt.Errorf("composite block at %d: parts cover %d bytes, the block %d", b.FileOffset, at-b.FileOffset, b.Size)
	}
	return nil
}

// usesComposites reports whether a file of m has a composite block
// (format 7).
func (m *Manifest) usesComposites() bool {
	for i := range m.Files {
		for j := range m.Files[i].Blocks {
			if m.Files[i].Blocks[j].Composite() {
				return true
			}
		}
	}
	return false
}

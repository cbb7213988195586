package repo

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// Binary file maps (manifest format 6, docs/format.md "Binary file
// maps"): a map object's plain content is mapMagic and then varints,
// instead of JSON. Every incremental reads its reference's maps (a 2 GB
// cluster's are ~65,000 block references) and decoding their JSON was
// half of a small incremental's time; a block costs ~20 bytes here
// before compression, against ~150 in JSON. Objects written before start
// with '{' and are still read as JSON.

// mapMagic starts a binary map object.
var mapMagic = []byte("pgkeep-map\x00\x01")

// Per-block flags: what is the same as the block before in its list (or,
// for the first block, as a zero block), so runs of blocks in one chunk
// cost a flag byte and their hash.
const (
	mapSameObject  = 1 << iota // pack, offset and length as the previous block
	mapContiguous              // file_offset is the previous block's end
	mapSameSize                // size as the previous block
	mapNextInChunk             // chunk_offset: the previous block's end if the same object, else 0
	mapSHA256                  // a 32-byte SHA-256 follows
	mapXXH3                    // a 16-byte xxh3-128 follows
	// mapComposite (format 7): the block is composite; uvarint N and its
	// N parts follow, each encoded as a block (relative to the part
	// before, the first to the block before), and the next block is
	// relative to the last part. No other flag goes with it.
	mapComposite
)

var errMapNotEncodable = errors.New("a composite block's part is itself composite")

// encodeMapObject is obj's binary form, or errMapNotEncodable for a shape
// the binary form has no room for (the caller then writes JSON).
func encodeMapObject(obj *mapObject) ([]byte, error) {
	b := append([]byte(nil), mapMagic...)
	b = binary.AppendUvarint(b, uint64(len(obj.Packs)))
	for _, p := range obj.Packs {
		b = appendString(b, p.Name)
		b = binary.AppendVarint(b, p.Size)
	}
	var err error
	b = binary.AppendUvarint(b, uint64(len(obj.Files)))
	for _, f := range obj.Files {
		b = binary.AppendUvarint(b, uint64(len(f)))
		var prev BlockRef
		for _, br := range f {
			if b, err = appendBlock(b, &prev, br); err != nil {
				return nil, err
			}
		}
	}
	b = binary.AppendUvarint(b, uint64(len(obj.Patches)))
	for _, p := range obj.Patches {
		b = appendString(b, p.Base.Object)
		b = binary.AppendVarint(b, int64(p.Base.Entry))
		b = append(b, boolByte(p.Base.Patch))
		b = binary.AppendVarint(b, int64(p.Depth))
		b = binary.AppendVarint(b, int64(p.Blocks))
		b = binary.AppendUvarint(b, uint64(len(p.Set)))
		var prev BlockRef
		prevIndex := -1
		for _, pb := range p.Set {
			b = binary.AppendVarint(b, int64(pb.Index-prevIndex))
			prevIndex = pb.Index
			if b, err = appendBlock(b, &prev, pb.BlockRef); err != nil {
				return nil, err
			}
		}
	}
	return b, nil
}

// appendBlock appends br, relative to *prev, and makes *prev what the
// next block is relative to.
func appendBlock(b []byte, prev *BlockRef, br BlockRef) ([]byte, error) {
	if br.Composite() {
		b = append(b, mapComposite)
		b = binary.AppendUvarint(b, uint64(len(br.Parts)))
		var err error
		for _, p := range br.Parts {
			if p.Composite() {
				return nil, errMapNotEncodable
			}
			if b, err = appendBlock(b, prev, p); err != nil {
				return nil, err
			}
		}
		return b, nil
	}
	defer func() { *prev = br }()
	var flags byte
	same := br.Pack == prev.Pack && br.Offset == prev.Offset && br.Length == prev.Length
	if same {
		flags |= mapSameObject
	}
	if br.FileOffset == prev.FileOffset+prev.Size {
		flags |= mapContiguous
	}
	if br.Size == prev.Size {
		flags |= mapSameSize
	}
	next := int64(0)
	if same {
		next = prev.ChunkOffset + prev.Size
	}
	if br.ChunkOffset == next {
		flags |= mapNextInChunk
	}
	switch br.Hash {
	case HashSHA256:
		flags |= mapSHA256
	case HashXXH3:
		flags |= mapXXH3
	}
	sum := br.DigestBytes()
	b = append(b, flags)
	if !same {
		b = binary.AppendVarint(b, int64(br.Pack))
		b = binary.AppendVarint(b, br.Offset-prev.Offset)
		b = binary.AppendVarint(b, br.Length)
	}
	if flags&mapContiguous == 0 {
		b = binary.AppendVarint(b, br.FileOffset)
	}
	if flags&mapSameSize == 0 {
		b = binary.AppendVarint(b, br.Size)
	}
	if flags&mapNextInChunk == 0 {
		b = binary.AppendVarint(b, br.ChunkOffset)
	}
	return append(b, sum...), nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

// mapDecoder reads a binary map object; the first error sticks.
type mapDecoder struct {
	b   []byte
	err error
}

func (d *mapDecoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("binary file map: %s at byte %d from the end", what, len(d.b))
	}
}

func (d *mapDecoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		d.b = nil
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads a list length: each entry takes at least min bytes, so a
// length the rest cannot hold is refused before anything is allocated.
func (d *mapDecoder) count(min int) int {
	v, n := binary.Uvarint(d.b)
	if n <= 0 || v > uint64(len(d.b)-n)/uint64(min) {
		d.fail("bad count")
		d.b = nil
		return 0
	}
	d.b = d.b[n:]
	return int(v)
}

func (d *mapDecoder) take(n int) []byte {
	if n < 0 || n > len(d.b) {
		d.fail("truncated")
		d.b = nil
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *mapDecoder) str() string { return string(d.take(d.count(1))) }

func (d *mapDecoder) block(prev *BlockRef) BlockRef {
	fl := d.take(1)
	if fl == nil {
		return BlockRef{}
	}
	flags := fl[0]
	if flags == mapComposite {
		// Each part takes at least 2 bytes (its flags and one field).
		parts := make([]BlockRef, d.count(2))
		for i := range parts {
			if parts[i] = d.plainBlock(prev); d.err != nil {
				return BlockRef{}
			}
		}
		if len(parts) == 0 {
			d.fail("composite block without parts")
			return BlockRef{}
		}
		br := BlockRef{FileOffset: parts[0].FileOffset, Parts: parts}
		for _, p := range parts {
			br.Size += p.Size
		}
		return br
	}
	return d.finishPlain(flags, prev)
}

// plainBlock reads a block that must not be composite (a part).
func (d *mapDecoder) plainBlock(prev *BlockRef) BlockRef {
	fl := d.take(1)
	if fl == nil {
		return BlockRef{}
	}
	return d.finishPlain(fl[0], prev)
}

// finishPlain reads a plain block's fields after its flags and makes it
// *prev.
func (d *mapDecoder) finishPlain(flags byte, prev *BlockRef) BlockRef {
	if flags&^(mapSameObject|mapContiguous|mapSameSize|mapNextInChunk|mapSHA256|mapXXH3) != 0 || flags&mapSHA256 != 0 && flags&mapXXH3 != 0 {
		d.fail("bad block flags")
		return BlockRef{}
	}
	br := BlockRef{Pack: prev.Pack, Offset: prev.Offset, Length: prev.Length}
	same := flags&mapSameObject != 0
	if !same {
		br.Pack = int(d.varint())
		br.Offset = prev.Offset + d.varint()
		br.Length = d.varint()
	}
	if flags&mapContiguous != 0 {
		br.FileOffset = prev.FileOffset + prev.Size
	} else {
		br.FileOffset = d.varint()
	}
	if flags&mapSameSize != 0 {
		br.Size = prev.Size
	} else {
		br.Size = d.varint()
	}
	switch {
	case flags&mapNextInChunk == 0:
		br.ChunkOffset = d.varint()
	case same:
		br.ChunkOffset = prev.ChunkOffset + prev.Size
	}
	switch {
	case flags&mapSHA256 != 0:
		br.Hash = HashSHA256
		copy(br.Sum[:], d.take(32))
	case flags&mapXXH3 != 0:
		br.Hash = HashXXH3
		copy(br.Sum[:], d.take(16))
	}
	*prev = br
	return br
}

// decodeMapObject decodes a map object's plain content: binary after
// mapMagic. Values are checked where they are used (resolve).
func decodeMapObject(data []byte) (*mapObject, error) {
	rest, ok := bytes.CutPrefix(data, mapMagic)
	if !ok {
		return nil, errors.New("binary file map: no magic")
	}
	d := &mapDecoder{b: rest}
	obj := &mapObject{}
	obj.Packs = make([]Pack, d.count(2))
	for i := range obj.Packs {
		obj.Packs[i] = Pack{Name: d.str(), Size: d.varint()}
	}
	obj.Files = make([][]BlockRef, d.count(1))
	for i := range obj.Files {
		list := make([]BlockRef, d.count(1))
		var prev BlockRef
		for j := range list {
			list[j] = d.block(&prev)
		}
		obj.Files[i] = list
	}
	if n := d.count(6); n > 0 {
		obj.Patches = make([]mapPatch, n)
	}
	for i := range obj.Patches {
		p := &obj.Patches[i]
		p.Base.Object = d.str()
		p.Base.Entry = int(d.varint())
		switch flag := d.take(1); {
		case flag == nil:
		case flag[0] > 1:
			d.fail("bad patch flag")
		default:
			p.Base.Patch = flag[0] == 1
		}
		p.Depth = int(d.varint())
		p.Blocks = int(d.varint())
		p.Set = make([]patchBlock, d.count(2))
		var prev BlockRef
		prevIndex := -1
		for j := range p.Set {
			idx := int64(prevIndex) + d.varint()
			if idx < -1<<31 || idx > 1<<31 {
				d.fail("bad patch index")
			}
			prevIndex = int(idx)
			p.Set[j] = patchBlock{Index: prevIndex, BlockRef: d.block(&prev)}
		}
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	if d.err != nil {
		return nil, d.err
	}
	return obj, nil
}

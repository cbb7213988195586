package repo

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
)

// randomMapObject is a map object like those backups write: lists of
// small blocks in chunks, whole blocks with SHA-256, patches.
func randomMapObject(rng *rand.Rand) *mapObject {
	obj := &mapObject{}
	for i := range 1 + rng.IntN(4) {
		obj.Packs = append(obj.Packs, Pack{Name: BackupPrefix("20261201T000000Z-aaaa") + "pack/00000" + string(rune('0'+i)), Size: rng.Int64N(1 << 30)})
	}
	hash := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		return b
	}
	list := func() []BlockRef {
		var out []BlockRef
		var fileOff, off int64
		small := rng.IntN(2) == 0
		for len(out) < 1+rng.IntN(300) {
			// A chunk of 1..128 blocks, or a whole block.
			n, bs := 1, int64(4<<20)
			if small {
				n, bs = 1+rng.IntN(128), 8<<10
			}
			length := 100 + rng.Int64N(1<<20)
			pack := rng.IntN(len(obj.Packs))
			for k := range n {
				b := BlockRef{Pack: pack, Offset: off, Length: length, FileOffset: fileOff, Size: bs, ChunkOffset: int64(k) * bs}
				if rng.IntN(50) == 0 {
					b.Size = 1 + rng.Int64N(bs) // a last, short block
				}
				if small {
					b.SetDigest(true, hash(16))
				} else if rng.IntN(10) > 0 {
					b.SetDigest(false, hash(32))
				}
				if k := 2 + rng.IntN(3); rng.IntN(15) == 0 && b.Size >= int64(k) {
					b = randomComposite(rng, b, k, len(obj.Packs), hash)
				}
				out = append(out, b)
				fileOff += b.Size
				if rng.IntN(40) == 0 {
					fileOff += bs // a hole: not contiguous
				}
			}
			if rng.IntN(3) == 0 {
				off = rng.Int64N(1 << 30) // a block of another backup, anywhere
			} else {
				off += length
			}
		}
		return out
	}
	for range rng.IntN(5) {
		obj.Files = append(obj.Files, list())
	}
	for range rng.IntN(3) {
		p := mapPatch{Base: MapRef{Object: MapName("20261130T000000Z-bbbb", rng.IntN(3)), Entry: rng.IntN(100), Patch: rng.IntN(2) == 0},
			Depth: 1 + rng.IntN(8), Blocks: rng.IntN(5000)}
		idx := rng.IntN(10)
		for _, b := range list() {
			p.Set = append(p.Set, patchBlock{Index: idx, BlockRef: b})
			idx += 1 + rng.IntN(20)
		}
		obj.Patches = append(obj.Patches, p)
	}
	return obj
}

// randomComposite is b (plain) made a composite of k parts (format 7):
// slices of random objects, some with a hash.
func randomComposite(rng *rand.Rand, b BlockRef, k, packs int, hash func(int) []byte) BlockRef {
	c := BlockRef{FileOffset: b.FileOffset, Size: b.Size}
	at, left := b.FileOffset, b.Size
	for i := range k {
		size := left
		if i < k-1 {
			size = 1 + rng.Int64N(left-int64(k-1-i))
		}
		p := BlockRef{Pack: rng.IntN(packs), Offset: rng.Int64N(1 << 30), Length: 100 + rng.Int64N(1<<20), FileOffset: at, Size: size, ChunkOffset: rng.Int64N(1 << 20)}
		if rng.IntN(2) == 0 {
			p.SetDigest(true, hash(16))
		}
		c.Parts = append(c.Parts, p)
		at += size
		left -= size
	}
	return c
}

// A binary map decodes to exactly what its JSON would, and is several
// times smaller.
func TestBinaryMapObjectRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var binSize, jsonSize int
	for i := range 300 {
		obj := randomMapObject(rng)
		data, err := encodeMapObject(obj)
		if err != nil {
			t.Fatal(err)
		}
		js, _ := json.Marshal(obj)
		binSize, jsonSize = binSize+len(data), jsonSize+len(js)
		got, err := parseMapObject(data)
		if err != nil {
			t.Fatalf("object %d: %v", i, err)
		}
		want, err := parseMapObject(js)
		if err != nil {
			t.Fatal(err)
		}
		normalize(got)
		normalize(want)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("object %d: binary decodes to\n%+v\nJSON to\n%+v", i, got, want)
		}
		// Every truncation is refused, never misread.
		for _, n := range []int{len(mapMagic), len(data) / 2, len(data) - 1} {
			if _, err := parseMapObject(data[:n]); err == nil {
				t.Fatalf("object %d truncated to %d of %d bytes decoded", i, n, len(data))
			}
		}
	}
	if binSize*3 > jsonSize {
		t.Errorf("binary maps %d bytes, JSON %d: want at most a third", binSize, jsonSize)
	}
	t.Logf("binary %d bytes, JSON %d", binSize, jsonSize)
}

// normalize makes empty and nil lists compare equal.
func normalize(o *mapObject) {
	for i := range o.Files {
		if len(o.Files[i]) == 0 {
			o.Files[i] = nil
		}
	}
	if len(o.Files) == 0 {
		o.Files = nil
	}
	if len(o.Packs) == 0 {
		o.Packs = nil
	}
	for i := range o.Patches {
		if len(o.Patches[i].Set) == 0 {
			o.Patches[i].Set = nil
		}
	}
	if len(o.Patches) == 0 {
		o.Patches = nil
	}
}

// A block hash in JSON (a manifest, a format 4/5 map) that is not hex of
// its kind's length, or a block with two, is refused when read: blocks
// hold hashes as bytes.
func TestBlockJSONRefusesOddHashes(t *testing.T) {
	for _, js := range []string{`{"xxh3":"abc"}`, `{"xxh3":"` + strings.Repeat("0", 31) + `g"}`,
		`{"sha256":"` + strings.Repeat("ab", 16) + `"}`, `{"sha256":"` + strings.Repeat("ab", 32) + `","xxh3":"` + strings.Repeat("ab", 16) + `"}`} {
		var b BlockRef
		if err := json.Unmarshal([]byte(js), &b); err == nil {
			t.Errorf("%s: read as %+v", js, b)
		}
	}
	// And the hex round-trips, under its kind's name.
	var b BlockRef
	b.SetDigest(false, bytes.Repeat([]byte{0xab}, 32))
	js, err := json.Marshal(b)
	if err != nil || !strings.Contains(string(js), `"sha256":"`+strings.Repeat("ab", 32)+`"`) || strings.Contains(string(js), "xxh3") {
		t.Fatalf("%s %v", js, err)
	}
	var back BlockRef
	if err := json.Unmarshal(js, &back); err != nil || !back.SameDigest(b) || back.Hash != HashSHA256 {
		t.Fatalf("%+v %v", back, err)
	}
}

// FuzzDecodeMapObject: a binary map that decodes encodes to the same bytes
// (nothing is read that is not there), and no input panics.
func FuzzDecodeMapObject(f *testing.F) {
	// Small seeds: the mutator is slow on big inputs.
	x := bytes.Repeat([]byte{0xab}, 32)
	small := func(b BlockRef) BlockRef { b.SetDigest(true, x[:16]); return b }
	whole := func(b BlockRef) BlockRef { b.SetDigest(false, x); return b }
	for _, obj := range []*mapObject{
		{Packs: []Pack{{Name: "p", Size: 9}}, Files: [][]BlockRef{{small(BlockRef{Length: 9, Size: 8192}), small(BlockRef{Length: 9, FileOffset: 8192, Size: 8192, ChunkOffset: 8192})}}},
		{Packs: []Pack{{Name: "p", Size: 9}}, Patches: []mapPatch{{Base: MapRef{Object: "m", Entry: 1}, Depth: 1, Blocks: 3,
			Set: []patchBlock{{Index: 2, BlockRef: whole(BlockRef{Length: 5, Size: 4 << 20})}}}}},
	} {
		data, err := encodeMapObject(obj)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		obj, err := decodeMapObject(b)
		if err != nil {
			return
		}
		again, err := encodeMapObject(obj)
		if err != nil {
			t.Fatalf("decoded map does not encode: %v", err)
		}
		back, err := decodeMapObject(again)
		if err != nil {
			t.Fatalf("re-encoded map does not decode: %v", err)
		}
		normalize(obj)
		normalize(back)
		if !reflect.DeepEqual(obj, back) {
			t.Fatalf("decode(encode(decode(b))) differs")
		}
	})
}

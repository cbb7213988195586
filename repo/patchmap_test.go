package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/mem"
)

// A patch map resolves to its base's list with its blocks put in; a
// reader refuses patches that are unsound: a base not listed in the
// manifest's maps, a wrong depth, an index out of range, an index past the
// base left unset, a chain that names itself.
func TestPatchMapResolution(t *testing.T) {
	ctx := context.Background()
	b := mem.New()
	if _, err := Init(ctx, b, InitOptions{CompressionLevel: 1}); err != nil {
		t.Fatal(err)
	}
	r, err := Open(ctx, b, OpenOptions{CompressionLevel: -1})
	if err != nil {
		t.Fatal(err)
	}
	full, inc := "20261201T000000Z-aaaa", "20261201T000100Z-bbbb"
	packA, packB := Pack{Name: PackName(full, 0), Size: 9000}, Pack{Name: PackName(inc, 0), Size: 900}
	blk := func(off int64) BlockRef {
		b := BlockRef{Offset: off, Length: 100, FileOffset: off * 80, Size: 8 << 10}
		b.SetDigest(true, bytes.Repeat([]byte{0xaa}, 16))
		return b
	}
	put := func(name string, obj mapObject) Pack {
		data, _ := json.Marshal(obj)
		if err := r.PutObject(ctx, name, data, storage.PutOptions{}); err != nil {
			t.Fatal(err)
		}
		info, _ := b.Stat(ctx, name)
		return Pack{Name: name, Size: info.Size}
	}
	base := put(MapName(full, 0), mapObject{Packs: []Pack{packA}, Files: [][]BlockRef{{blk(0), blk(100), blk(200)}}})
	mk := func(p mapPatch, listBase bool) *Manifest {
		patch := put(MapName(inc, 0), mapObject{Packs: []Pack{packB}, Patches: []mapPatch{p}})
		m := &Manifest{Summary: Summary{ID: inc, Format: 5}, BlockSize: 4 << 20, Packs: []Pack{packA, packB},
			Maps:  []Pack{patch},
			Files: []File{{Path: "base/1/1", Size: 4 * 8 << 10, BlockSize: 8 << 10, Map: &MapRef{Object: patch.Name, Patch: true}}}}
		if listBase {
			m.Maps = append(m.Maps, base)
		}
		return m
	}
	newBlk := blk(0)
	newBlk.SetDigest(true, bytes.Repeat([]byte{0xbb}, 16))
	good := mapPatch{Base: MapRef{Object: base.Name}, Depth: 1, Blocks: 4, Set: []patchBlock{{Index: 1, BlockRef: newBlk}, {Index: 3, BlockRef: newBlk}}}
	m := mk(good, true)
	if err := r.resolveMaps(ctx, m, r.newRelocator()); err != nil {
		t.Fatal(err)
	}
	f := m.Files[0]
	if len(f.Blocks) != 4 || f.Blocks[0].Pack != 0 || f.Blocks[1].Pack != 1 || !f.Blocks[1].SameDigest(newBlk) || !reflect.DeepEqual(f.Blocks[2], blk(200)) || f.Blocks[3].Pack != 1 {
		t.Errorf("resolved %+v", f.Blocks)
	}
	if f.MapDepth != 1 || len(f.MapChain) != 2 || f.MapChain[1] != base.Name {
		t.Errorf("depth %d chain %v; want 1 and the patch's then the base's object", f.MapDepth, f.MapChain)
	}
	for _, c := range []struct {
		what     string
		p        mapPatch
		listBase bool
		want     string
	}{
		{"base not listed", good, false, "not listed"},
		{"wrong depth", mapPatch{Base: good.Base, Depth: 2, Blocks: 4, Set: good.Set}, true, "depth"},
		{"index out of range", mapPatch{Base: good.Base, Depth: 1, Blocks: 4, Set: []patchBlock{{Index: 4, BlockRef: newBlk}, {Index: 3, BlockRef: newBlk}}}, true, "block index"},
		{"index past the base unset", mapPatch{Base: good.Base, Depth: 1, Blocks: 5, Set: good.Set}, true, "not all set"},
		{"itself as base", mapPatch{Base: MapRef{Object: MapName(inc, 0), Patch: true}, Depth: 1, Blocks: 3}, true, "patches"},
	} {
		err := r.resolveMaps(ctx, mk(c.p, c.listBase), r.newRelocator())
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want an error saying %q", c.what, err, c.want)
		}
	}
	m = mk(good, true)
	m.Format = 4
	if err := r.resolveMaps(ctx, m, r.newRelocator()); err == nil {
		t.Error("a patch map in a format 4 manifest is accepted")
	}
}

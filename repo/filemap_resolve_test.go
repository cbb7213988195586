package repo

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
)

// naiveResolve is the definition of a patch chain's list: each patch
// applied in turn to a copy of its base's list.
func naiveResolve(objs map[string]*mapObject, ref MapRef) []BlockRef {
	obj := objs[ref.Object]
	if !ref.Patch {
		return append([]BlockRef(nil), obj.Files[ref.Entry]...)
	}
	p := obj.Patches[ref.Entry]
	base := naiveResolve(objs, p.Base)
	out := make([]BlockRef, p.Blocks)
	copy(out, base)
	for _, pb := range p.Set {
		out[pb.Index] = pb.BlockRef
	}
	return out
}

// TestResolveMatchesNaive: random chains of patches that cut, extend and
// set blocks twice resolve to what applying each patch in turn gives.
func TestResolveMatchesNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := 0; trial < 300; trial++ {
		objs := map[string]*mapObject{}
		listed := map[string]bool{}
		n := rng.IntN(40)
		root := &mapObject{Packs: []Pack{{Name: "p0"}}, Files: [][]BlockRef{nil, make([]BlockRef, n)}}
		for j := range root.Files[1] {
			root.Files[1][j] = BlockRef{Offset: int64(j), Length: 1, Size: 1}
		}
		objs["m0"], listed["m0"] = root, true
		ref, length := MapRef{Object: "m0", Entry: 1}, n
		depth := rng.IntN(10)
		for d := 1; d <= depth; d++ {
			name := fmt.Sprintf("m%d", d)
			blocks := max(0, length+rng.IntN(9)-4)
			p := mapPatch{Base: ref, Depth: d, Blocks: blocks}
			for j := length; j < blocks; j++ { // every index past the base
				p.Set = append(p.Set, patchBlock{Index: j, BlockRef: BlockRef{Offset: int64(1000*d + j), Length: 1, Size: 1}})
			}
			for k := rng.IntN(6); k > 0 && blocks > 0; k-- { // some set twice
				j := rng.IntN(blocks)
				p.Set = append(p.Set, patchBlock{Index: j, BlockRef: BlockRef{Offset: int64(1000*d + 500 + k), Length: 1, Size: 1}})
			}
			rng.Shuffle(len(p.Set), func(a, b int) { p.Set[a], p.Set[b] = p.Set[b], p.Set[a] })
			objs[name] = &mapObject{Packs: []Pack{{Name: "q" + name}}, Patches: []mapPatch{{}, p}}
			listed[name] = true
			ref, length = MapRef{Object: name, Entry: 1, Patch: true}, blocks
		}
		// The manifest's pack table: p0 (the full list's) is pack 0, qm<d>
		// (patch d's) pack d.
		packIdx := map[string]int{"p0": 0}
		for d := 1; d <= depth; d++ {
			packIdx[fmt.Sprintf("qm%d", d)] = d
		}
		mr := &mapResolver{listed: listed, objs: objs, done: map[MapRef]*resolvedMap{}, packIdx: packIdx, trans: map[*mapObject][]int{}}
		got, err := mr.resolve(context.Background(), ref)
		if err != nil {
			t.Fatalf("trial %d: %v", trial, err)
		}
		want := naiveResolve(objs, ref)
		if len(got.blocks) != len(want) || got.depth != depth || len(got.chain) != depth+1 {
			t.Fatalf("trial %d: %d blocks depth %d chain %v, want %d blocks depth %d", trial, len(got.blocks), got.depth, got.chain, len(want), depth)
		}
		for j := range want {
			// Offsets say which level a block came from (1000*d + ...).
			if wantPack := int(want[j].Offset / 1000); got.blocks[j].Pack != wantPack {
				t.Fatalf("trial %d: block %d names pack %d, want %d", trial, j, got.blocks[j].Pack, wantPack)
			}
			if got.blocks[j].Offset != want[j].Offset {
				t.Fatalf("trial %d: block %d is %d, want %d", trial, j, got.blocks[j].Offset, want[j].Offset)
			}
		}
	}
}

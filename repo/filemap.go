package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/pgkeep/pgkeep/storage"
)

// Shared file maps (manifest format 4, docs/format.md "Shared file
// maps"): a file's block list is stored in a map object, and a backup
// that takes a file unread names the reference's map instead of copying
// the list, so a manifest grows with the change, not with the cluster.
// Readers resolve maps when they read the manifest: everything after
// ReadManifest sees block lists as before.

// mapObjectBlocks bounds the block references of one map object written.
const mapObjectBlocks = 1 << 17

// MapName is the object name of map object n of backup id.
func MapName(id string, n int) string { return fmt.Sprintf("%smap/%06d", BackupPrefix(id), n) }

// isMapName reports whether name is backups/<id>/map/<NNNNNN>.
func isMapName(name string) bool {
	rest, ok := strings.CutPrefix(name, backupsPrefix)
	if !ok {
		return false
	}
	id, n, ok := strings.Cut(rest, "/map/")
	if !ok || ValidBackupID(id) != nil || len(n) != 6 {
		return false
	}
	return strings.Trim(n, "0123456789") == ""
}

// MapRef names a file's block list: entry Entry of map object Object.
type MapRef struct {
	Object string `json:"object"`
	Entry  int    `json:"entry"`
	// Patch (format 5): Entry indexes the object's patches, not its files.
	Patch bool `json:"patch,omitempty"`
}

// mapObject is a map object's plain content: block lists whose pack
// indexes refer to its own pack table (full names), so any manifest can
// name it.
type mapObject struct {
	Packs   []Pack       `json:"packs"`
	Files   [][]BlockRef `json:"files"`
	Patches []mapPatch   `json:"patches,omitempty"`
}

// Patch maps (manifest format 5): a file that is read and changed in a
// few blocks gets, instead of a whole new block list, a patch of its
// reference's list: the blocks that differ, by index. Chains are bounded
// (maxPatchDepth patches on a full list, and a patch of more than
// 1/maxPatchShare of its base's blocks is written whole), so resolving a
// file reads at most maxPatchDepth+1 map objects, and every map object of
// the chain is listed in the manifest's maps (and so in refs.json):
// retention keeps them like packs.
const (
	maxPatchDepth = 8
	maxPatchShare = 4
	// maxResolveHops bounds how far a reader follows bases (a damaged or
	// hostile map could name itself).
	maxResolveHops = 64
)

// mapPatch is a block list made of the list Base names with the blocks
// of Set put at their indexes, cut or extended to Blocks entries.
type mapPatch struct {
	Base   MapRef       `json:"base"`
	Depth  int          `json:"depth"` // 1 + the base's (a full list's is 0)
	Blocks int          `json:"blocks"`
	Set    []patchBlock `json:"set"`
}

// patchBlock is block Index of the patched list.
type patchBlock struct {
	Index int `json:"i"`
	BlockRef
}

// MarshalJSON spells a patch block as its block's fields plus "i" (the
// embedded BlockRef's own MarshalJSON would drop the index).
func (p patchBlock) MarshalJSON() ([]byte, error) {
	b, err := json.Marshal(p.BlockRef)
	if err != nil {
		return nil, err
	}
	return append(fmt.Appendf(nil, `{"i":%d,`, p.Index), b[1:]...), nil
}

func (p *patchBlock) UnmarshalJSON(data []byte) error {
	var i struct {
		Index int `json:"i"`
	}
	if err := json.Unmarshal(data, &i); err != nil {
		return err
	}
	p.Index = i.Index
	return json.Unmarshal(data, &p.BlockRef)
}

// MapBase is the map of a file in the reference backup, which a changed
// file's map may patch: its map entry, that entry's patch depth, its
// resolved blocks (Pack indexing Packs) and the map objects resolving it
// reads (Chain, with sizes).
type MapBase struct {
	Map    MapRef
	Depth  int
	Blocks []BlockRef
	Packs  []Pack
	Chain  []Pack
}

// patchOf is f's block list as a patch of f.Base, or nil when a full list
// is due (no base, the chain is long enough, or too much changed).
func patchOf(m *Manifest, f *File) *mapPatch {
	b := f.Base
	if b == nil || b.Depth+1 > maxPatchDepth || len(b.Blocks) == 0 {
		return nil
	}
	limit := len(b.Blocks) / maxPatchShare
	var set []patchBlock
	for j, nb := range f.Blocks {
		if j < len(b.Blocks) {
			if SameBlock(nb, m.Packs, b.Blocks[j], b.Packs) {
				continue
			}
		}
		if len(set) >= limit {
			return nil
		}
		set = append(set, patchBlock{Index: j, BlockRef: nb})
	}
	return &mapPatch{Base: b.Map, Depth: b.Depth + 1, Blocks: len(f.Blocks), Set: set}
}

// writeMaps stores the block lists of m's files that have no map yet in
// new map objects of m's backup and points the files at them.
func (r *Repository) writeMaps(ctx context.Context, m *Manifest) error {
	if m.InlineBlocks {
		return nil
	}
	var (
		obj     *mapObject
		packIdx map[string]int
		pending []int
		patched []int
		blocks  int
		n       int
	)
	listed := map[string]bool{}
	for _, p := range m.Maps {
		listed[p.Name] = true
	}
	flush := func() error {
		if obj == nil {
			return nil
		}
		data, err := encodeMapObject(obj)
		if err != nil {
			// A hash that would not round-trip (none pgkeep writes):
			// JSON keeps it as it is.
			data, err = json.Marshal(obj)
		}
		if err != nil {
			return err
		}
		name := MapName(m.ID, n)
		if err := r.PutObject(ctx, name, data, storage.PutOptions{IfAbsent: true}); err != nil {
			return fmt.Errorf("write file map: %w", err)
		}
		info, err := r.backend.Stat(ctx, name)
		if err != nil {
			return fmt.Errorf("write file map: %w", err)
		}
		m.Maps = append(m.Maps, Pack{Name: name, Size: info.Size})
		listed[name] = true
		m.Summary.StoredSize += info.Size
		for k, i := range pending {
			m.Files[i].Map = &MapRef{Object: name, Entry: k}
			m.Files[i].MapChain = []string{name}
		}
		for k, i := range patched {
			f := &m.Files[i]
			f.Map = &MapRef{Object: name, Entry: k, Patch: true}
			f.MapChain = []string{name}
			f.MapDepth = f.Base.Depth + 1
			// The base's objects are read to resolve it: the manifest
			// lists them, so refs.json keeps them.
			for _, c := range f.Base.Chain {
				f.MapChain = append(f.MapChain, c.Name)
				if !listed[c.Name] {
					listed[c.Name] = true
					m.Maps = append(m.Maps, c)
				}
			}
		}
		obj, pending, patched, blocks = nil, nil, nil, 0
		n++
		return nil
	}
	for i := range m.Files {
		f := &m.Files[i]
		if f.Map != nil || len(f.Blocks) == 0 {
			continue
		}
		if obj == nil {
			obj, packIdx = &mapObject{}, map[string]int{}
		}
		own := func(b BlockRef) BlockRef {
			b = b.Clone()
			one := []BlockRef{b}
			EachObjectRef(one, func(o *BlockRef) error {
				p := m.Packs[o.Pack]
				k, ok := packIdx[p.Name]
				if !ok {
					k = len(obj.Packs)
					packIdx[p.Name] = k
					obj.Packs = append(obj.Packs, p)
				}
				o.Pack = k
				return nil
			})
			return one[0]
		}
		var added int
		if p := patchOf(m, f); p != nil {
			for k := range p.Set {
				p.Set[k].BlockRef = own(p.Set[k].BlockRef)
			}
			obj.Patches = append(obj.Patches, *p)
			patched = append(patched, i)
			added = len(p.Set) + 1
		} else {
			refs := make([]BlockRef, len(f.Blocks))
			for j, b := range f.Blocks {
				refs[j] = own(b)
			}
			obj.Files = append(obj.Files, refs)
			pending = append(pending, i)
			added = len(refs)
		}
		if blocks += added; blocks >= mapObjectBlocks {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// storedForm is m as its manifest object holds it: files with a map
// carry no block list.
func (m *Manifest) storedForm() *Manifest {
	s := *m
	s.Files = make([]File, len(m.Files))
	for i, f := range m.Files {
		if f.Map != nil {
			f.Blocks = nil
		}
		s.Files[i] = f
	}
	return &s
}

// usesPatches reports whether a file of m names a patch map (format 5).
func (m *Manifest) usesPatches() bool {
	for _, f := range m.Files {
		if f.Map != nil && f.Map.Patch {
			return true
		}
	}
	return false
}

// usesMaps reports whether a file of m names a map (format 4).
func (m *Manifest) usesMaps() bool {
	for _, f := range m.Files {
		if f.Map != nil {
			return true
		}
	}
	return false
}

// foreignMaps lists the map objects of m written by other backups.
func (m *Manifest) foreignMaps() []string {
	var out []string
	for _, p := range m.Maps {
		if !strings.HasPrefix(p.Name, BackupPrefix(m.ID)) {
			out = append(out, p.Name)
		}
	}
	return out
}

// resolveMaps fills in the block lists of m's files from the map objects
// they name, each read once, with pack indexes into m's pack table; a
// patch (format 5) is applied to its base's list, resolved the same way.
// A map that names a pack the manifest does not list, or a map object
// (the file's or one of its bases') not listed in the manifest's maps, is
// refused: refs.json, which retention trusts, is made from those tables.
func (r *Repository) resolveMaps(ctx context.Context, m *Manifest, t *relocator) error {
	listed := map[string]bool{}
	for _, p := range m.Maps {
		listed[p.Name] = true
	}
	packIdx := map[string]int{}
	for i, p := range m.Packs {
		packIdx[p.Name] = i
	}
	res := &mapResolver{r: r, listed: listed, objs: map[string]*mapObject{}, done: map[MapRef]*resolvedMap{},
		packIdx: packIdx, t: t, trans: map[*mapObject][]int{}}
	res.prefetch(ctx, m.Maps, r.codec.concurrency())
	handedOut := map[*resolvedMap]bool{}
	for i := range m.Files {
		f := &m.Files[i]
		if f.Map == nil {
			continue
		}
		if len(f.Blocks) > 0 || !listed[f.Map.Object] {
			return fmt.Errorf("%s: map %s: %w: not listed in the manifest's maps, or blocks given too", f.Path, f.Map.Object, ErrCorrupt)
		}
		if f.Map.Patch && m.Format < 5 {
			return fmt.Errorf("%s: a patch map in a format %d manifest: %w", f.Path, m.Format, ErrCorrupt)
		}
		e, err := res.resolve(ctx, *f.Map)
		if err != nil {
			return fmt.Errorf("%s: %w", f.Path, err)
		}
		// The list is the file's own unless another file named the same
		// entry (nothing writes that, but nothing forbids it either).
		f.Blocks = e.blocks
		if handedOut[e] {
			f.Blocks = make([]BlockRef, len(e.blocks))
			for j, b := range e.blocks {
				f.Blocks[j] = b.Clone()
			}
		}
		handedOut[e] = true
		f.MapDepth, f.MapChain = e.depth, e.chain
	}
	return nil
}

// mapResolver resolves map entries, reading each map object once, into
// block lists whose packs are numbered in the manifest's table.
type mapResolver struct {
	r       *Repository
	listed  map[string]bool
	objs    map[string]*mapObject
	done    map[MapRef]*resolvedMap
	packIdx map[string]int       // the manifest's pack table
	t       *relocator           // for packs a repack moved
	trans   map[*mapObject][]int // an object's pack number -> the manifest's (-1: not listed)
}

// resolvedMap is a map entry's block list (packs numbered in the
// manifest's table), its patch depth and the map objects it was resolved
// from (its own first).
type resolvedMap struct {
	blocks []BlockRef
	depth  int
	chain  []string
}

// own is b, a block of map object obj (named object), with its packs
// numbered in the manifest's table. A map naming a pack a repack moved:
// the manifest lists where its block went (a backup that named the map
// after the repack read it through the relocation).
func (mr *mapResolver) own(ctx context.Context, obj *mapObject, object string, b BlockRef) (BlockRef, error) {
	tr := mr.trans[obj]
	if tr == nil {
		tr = make([]int, len(obj.Packs))
		for k, p := range obj.Packs {
			tr[k] = -1
			if idx, ok := mr.packIdx[p.Name]; ok {
				tr[k] = idx
			}
		}
		mr.trans[obj] = tr
	}
	one := func(o *BlockRef) error {
		if o.Pack < 0 || o.Pack >= len(obj.Packs) {
			return fmt.Errorf("map %s: %w: pack %d of %d", object, ErrCorrupt, o.Pack, len(obj.Packs))
		}
		if k := tr[o.Pack]; k >= 0 {
			o.Pack = k
			return nil
		}
		pack := obj.Packs[o.Pack].Name
		for hops := 0; hops < maxRelocationHops; hops++ {
			to, off, moved, err := mr.t.step(ctx, pack, o.Offset, o.Length)
			if err != nil {
				return err
			}
			if !moved {
				break
			}
			pack, o.Offset = to.Name, off
			if k, ok := mr.packIdx[pack]; ok {
				o.Pack = k
				return nil
			}
		}
		return fmt.Errorf("map %s names pack %s, which the manifest does not list: %w", object, pack, ErrCorrupt)
	}
	if !b.Composite() {
		err := one(&b)
		return b, err
	}
	b = b.Clone() // the object's copy stays as it is
	for j := range b.Parts {
		if err := one(&b.Parts[j]); err != nil {
			return b, err
		}
	}
	return b, nil
}

// prefetch reads and decodes the map objects maps lists, up to n at a
// time: a 15 GiB cluster's reference has several megabytes of them, and
// decrypting, decompressing and decoding them one by one left a core idle.
// A failure is left to object, which reads that one again and reports it.
func (mr *mapResolver) prefetch(ctx context.Context, maps []Pack, n int) {
	if len(maps) < 2 || n < 2 {
		return
	}
	objs := make([]*mapObject, len(maps))
	forEachIndex(len(maps), n, func(i int) {
		objs[i], _ = mr.r.readFileMap(ctx, maps[i].Name)
	})
	for i, obj := range objs {
		if obj != nil {
			mr.objs[maps[i].Name] = obj
		}
	}
}

func (mr *mapResolver) object(ctx context.Context, name string) (*mapObject, error) {
	if obj, ok := mr.objs[name]; ok {
		return obj, nil
	}
	if !mr.listed[name] {
		return nil, fmt.Errorf("map %s: %w: not listed in the manifest's maps", name, ErrCorrupt)
	}
	obj, err := mr.r.readFileMap(ctx, name)
	if err != nil {
		return nil, err
	}
	mr.objs[name] = obj
	return obj, nil
}

// readFileMap reads and decodes file map object name.
func (r *Repository) readFileMap(ctx context.Context, name string) (*mapObject, error) {
	var buf bytes.Buffer
	if _, err := r.GetObject(ctx, name, &buf); err != nil {
		return nil, fmt.Errorf("file map %s: %w", name, err)
	}
	obj, err := parseMapObject(buf.Bytes())
	if err != nil {
		return nil, fmt.Errorf("file map %s: %w: %v", name, ErrCorrupt, err)
	}
	return obj, nil
}

// resolve is ref's block list. A patch chain is followed down to its full
// list first and checked level by level, then the list is built once from
// the top: the newest patch that sets an index (below every newer patch's
// length) gives its block. Copying each base's list into each patch's cost
// more than all else in an incremental of a small change (70 ms of 120 in
// bench/incr.sh's updates100 after a few backups).
func (mr *mapResolver) resolve(ctx context.Context, ref MapRef) (*resolvedMap, error) {
	if e, ok := mr.done[ref]; ok {
		return e, nil
	}
	type level struct {
		ref MapRef
		obj *mapObject
		p   *mapPatch
	}
	var levels []level // ref's patch first, then its base's, ...
	cur := ref
	var root *mapObject
	for {
		if len(levels) > maxResolveHops {
			return nil, fmt.Errorf("map %s: %w: a chain of more than %d patches", cur.Object, ErrCorrupt, maxResolveHops)
		}
		obj, err := mr.object(ctx, cur.Object)
		if err != nil {
			return nil, err
		}
		if !cur.Patch {
			if cur.Entry < 0 || cur.Entry >= len(obj.Files) {
				return nil, fmt.Errorf("entry %d of map %s: %w", cur.Entry, cur.Object, ErrCorrupt)
			}
			root = obj
			break
		}
		if cur.Entry < 0 || cur.Entry >= len(obj.Patches) {
			return nil, fmt.Errorf("patch %d of map %s: %w", cur.Entry, cur.Object, ErrCorrupt)
		}
		p := &obj.Patches[cur.Entry]
		levels = append(levels, level{cur, obj, p})
		cur = p.Base
	}
	src := root.Files[cur.Entry]
	// Check each patch against its base, from the full list up.
	baseLen, baseDepth := len(src), 0
	for k := len(levels) - 1; k >= 0; k-- {
		l := levels[k]
		p := l.p
		if p.Depth != baseDepth+1 || p.Blocks < 0 || p.Blocks > baseLen+len(p.Set) {
			return nil, fmt.Errorf("patch %d of map %s: %w: depth %d on a base of depth %d, %d blocks", l.ref.Entry, l.ref.Object, ErrCorrupt, p.Depth, baseDepth, p.Blocks)
		}
		inBase := min(p.Blocks, baseLen)
		past := make([]bool, p.Blocks-inBase) // every index past the base must be set
		unset := len(past)
		for _, pb := range p.Set {
			if pb.Index < 0 || pb.Index >= p.Blocks {
				return nil, fmt.Errorf("patch %d of map %s: %w: block index %d of %d", l.ref.Entry, l.ref.Object, ErrCorrupt, pb.Index, p.Blocks)
			}
			if k := pb.Index - inBase; k >= 0 && !past[k] {
				past[k] = true
				unset--
			}
		}
		if unset != 0 {
			return nil, fmt.Errorf("patch %d of map %s: %w: blocks past its base are not all set", l.ref.Entry, l.ref.Object, ErrCorrupt)
		}
		baseLen, baseDepth = p.Blocks, p.Depth
	}
	e := &resolvedMap{depth: baseDepth, blocks: make([]BlockRef, baseLen)}
	filled := make([]bool, baseLen)
	limit := baseLen
	var err error
	for _, l := range levels {
		limit = min(limit, l.p.Blocks)
		// Within one patch a later entry for an index wins.
		for j := len(l.p.Set) - 1; j >= 0; j-- {
			pb := l.p.Set[j]
			if pb.Index >= limit || filled[pb.Index] {
				continue
			}
			if e.blocks[pb.Index], err = mr.own(ctx, l.obj, l.ref.Object, pb.BlockRef); err != nil {
				return nil, err
			}
			filled[pb.Index] = true
		}
		if !slices.Contains(e.chain, l.ref.Object) {
			e.chain = append(e.chain, l.ref.Object)
		}
	}
	for j := range min(limit, len(src)) {
		if filled[j] {
			continue
		}
		if e.blocks[j], err = mr.own(ctx, root, cur.Object, src[j]); err != nil {
			return nil, err
		}
		filled[j] = true
	}
	if i := slices.Index(filled, false); i >= 0 {
		// The checks above rule this out; a list with a hole must not
		// reach a restore.
		return nil, fmt.Errorf("map %s: %w: block %d of %d resolves to nothing", ref.Object, ErrCorrupt, i, baseLen)
	}
	if !slices.Contains(e.chain, cur.Object) {
		e.chain = append(e.chain, cur.Object)
	}
	mr.done[ref] = e
	return e, nil
}

// parseMapObject decodes a map object: binary (format 6) or JSON (formats
// 4 and 5).
func parseMapObject(data []byte) (*mapObject, error) {
	if bytes.HasPrefix(data, mapMagic) {
		return decodeMapObject(data)
	}
	obj := &mapObject{}
	if err := json.Unmarshal(data, obj); err != nil {
		return nil, err
	}
	return obj, nil
}

package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
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
}

// mapObject is a map object's plain content: block lists whose pack
// indexes refer to its own pack table (full names), so any manifest can
// name it.
type mapObject struct {
	Packs []Pack       `json:"packs"`
	Files [][]BlockRef `json:"files"`
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
		blocks  int
		n       int
	)
	flush := func() error {
		if obj == nil {
			return nil
		}
		data, err := json.Marshal(obj)
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
		m.Summary.StoredSize += info.Size
		for k, i := range pending {
			m.Files[i].Map = &MapRef{Object: name, Entry: k}
		}
		obj, pending, blocks = nil, nil, 0
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
		refs := make([]BlockRef, len(f.Blocks))
		for j, b := range f.Blocks {
			p := m.Packs[b.Pack]
			k, ok := packIdx[p.Name]
			if !ok {
				k = len(obj.Packs)
				packIdx[p.Name] = k
				obj.Packs = append(obj.Packs, p)
			}
			b.Pack = k
			refs[j] = b
		}
		obj.Files = append(obj.Files, refs)
		pending = append(pending, i)
		if blocks += len(refs); blocks >= mapObjectBlocks {
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
// they name, each read once, with pack indexes into m's pack table. A map
// that names a pack the manifest does not list is refused: refs.json,
// which retention trusts, is made from that table.
func (r *Repository) resolveMaps(ctx context.Context, m *Manifest) error {
	listed := map[string]bool{}
	for _, p := range m.Maps {
		listed[p.Name] = true
	}
	packIdx := map[string]int{}
	for i, p := range m.Packs {
		packIdx[p.Name] = i
	}
	objs := map[string]*mapObject{}
	for i := range m.Files {
		f := &m.Files[i]
		if f.Map == nil {
			continue
		}
		if len(f.Blocks) > 0 || !listed[f.Map.Object] {
			return fmt.Errorf("%s: map %s: %w: not listed in the manifest's maps, or blocks given too", f.Path, f.Map.Object, ErrCorrupt)
		}
		obj, ok := objs[f.Map.Object]
		if !ok {
			var buf bytes.Buffer
			if _, err := r.GetObject(ctx, f.Map.Object, &buf); err != nil {
				return fmt.Errorf("file map %s: %w", f.Map.Object, err)
			}
			obj = &mapObject{}
			if err := json.Unmarshal(buf.Bytes(), obj); err != nil {
				return fmt.Errorf("file map %s: %w: %v", f.Map.Object, ErrCorrupt, err)
			}
			objs[f.Map.Object] = obj
		}
		if f.Map.Entry < 0 || f.Map.Entry >= len(obj.Files) {
			return fmt.Errorf("%s: entry %d of map %s: %w", f.Path, f.Map.Entry, f.Map.Object, ErrCorrupt)
		}
		src := obj.Files[f.Map.Entry]
		f.Blocks = make([]BlockRef, len(src))
		for j, b := range src {
			if b.Pack < 0 || b.Pack >= len(obj.Packs) {
				return fmt.Errorf("%s: map %s: %w: pack %d of %d", f.Path, f.Map.Object, ErrCorrupt, b.Pack, len(obj.Packs))
			}
			k, ok := packIdx[obj.Packs[b.Pack].Name]
			if !ok {
				return fmt.Errorf("%s: map %s names pack %s, which the manifest does not list: %w", f.Path, f.Map.Object, obj.Packs[b.Pack].Name, ErrCorrupt)
			}
			b.Pack = k
			f.Blocks[j] = b
		}
	}
	return nil
}

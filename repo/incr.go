package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/pgkeep/pgkeep/storage"
)

// Incremental backups (format 2, docs/format.md "Backups are whole"): a
// manifest's packs table may name packs of other backups, so a backup
// stores only the blocks that changed and still lists every block it
// needs. Packs stay where the backup that wrote them put them
// (backups/<id>/pack/NNNNNN); deleting a backup removes only the packs no
// other backup references.

// refsName is backups/<id>/refs.json: the packs of other backups a format 2
// backup references, in plain JSON, so delete learns them without a key.
func refsName(id string) string { return BackupPrefix(id) + "refs.json" }

// Refs is the plain content of refs.json: the packs and (format 4) the
// file maps of other backups a backup names.
type Refs struct {
	Packs []string `json:"packs"`
	Maps  []string `json:"maps,omitempty"`
}

// isPackName reports whether name is backups/<id>/pack/<NNNNNN>.
func isPackName(name string) bool {
	rest, ok := strings.CutPrefix(name, backupsPrefix)
	if !ok {
		return false
	}
	id, n, ok := strings.Cut(rest, "/pack/")
	if !ok || ValidBackupID(id) != nil || len(n) != 6 {
		return false
	}
	return strings.Trim(n, "0123456789") == ""
}

// packOwner is the backup ID a pack name belongs to.
func packOwner(name string) string {
	id, _, _ := strings.Cut(strings.TrimPrefix(name, backupsPrefix), "/")
	return id
}

// foreignPacks lists the packs of m written by other backups.
func (m *Manifest) foreignPacks() []string {
	var out []string
	for _, p := range m.Packs {
		if !strings.HasPrefix(p.Name, BackupPrefix(m.ID)) {
			out = append(out, p.Name)
		}
	}
	return out
}

// usesChunks reports whether m has a file cut into small blocks or a
// block inside a chunk (format 3).
func (m *Manifest) usesChunks() bool {
	for _, f := range m.Files {
		if f.BlockSize > 0 {
			return true
		}
		for _, b := range f.Refs() {
			if b.ChunkOffset > 0 {
				return true
			}
		}
	}
	return false
}

func (r *Repository) putRefs(ctx context.Context, id string, refs Refs) error {
	data, err := json.Marshal(refs)
	if err != nil {
		return err
	}
	if err := r.backend.Put(ctx, refsName(id), bytes.NewReader(data), storage.PutOptions{IfAbsent: true}); err != nil && !errors.Is(err, storage.ErrExists) {
		return fmt.Errorf("write pack references: %w", err)
	}
	return nil
}

// readRefs reads backup id's refs.json: the names of the packs and maps
// of other backups it references (nil, nil when it has none).
func (r *Repository) readRefs(ctx context.Context, id string) ([]string, error) {
	rc, err := r.backend.Get(ctx, refsName(id))
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, 64<<20))
	if err != nil {
		return nil, err
	}
	var refs Refs
	if err := json.Unmarshal(data, &refs); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", refsName(id), ErrCorrupt, err)
	}
	for _, p := range refs.Packs {
		if !isPackName(p) {
			return nil, fmt.Errorf("%s: %w: %q is not a pack name", refsName(id), ErrCorrupt, p)
		}
	}
	for _, p := range refs.Maps {
		if !isMapName(p) {
			return nil, fmt.Errorf("%s: %w: %q is not a file map name", refsName(id), ErrCorrupt, p)
		}
	}
	return append(refs.Packs, refs.Maps...), nil
}

// referencedPacks returns every pack of another backup that a committed
// backup references, and every pack a running backup may still reference:
// all packs of its reference and what that reference references. except is
// the backup being deleted (its own start record names no one who needs
// it). A refs.json that cannot be read fails the call: deleting then could
// break a kept backup.
func (r *Repository) referencedPacks(ctx context.Context, except string) (map[string]bool, error) {
	inUse, _, err := r.packsInUse(ctx, except)
	return inUse, err
}

// packsInUse is referencedPacks and the listing it was computed from.
func (r *Repository) packsInUse(ctx context.Context, except string) (map[string]bool, backupListing, error) {
	l, err := r.listBackupObjects(ctx)
	if err != nil {
		return nil, l, err
	}
	inUse := map[string]bool{}
	refsOf := func(id string) error { return r.addRefs(ctx, id, inUse) }
	for _, id := range l.committed {
		if err := refsOf(id); err != nil {
			return nil, l, err
		}
	}
	held, err := r.runningHolds(ctx, l, except)
	if err != nil {
		return nil, l, err
	}
	for n := range held {
		inUse[n] = true
	}
	if err := r.relocationsInUse(ctx, l, inUse); err != nil {
		return nil, l, err
	}
	return inUse, l, nil
}

// addRefs adds what backup id's refs.json names to inUse.
func (r *Repository) addRefs(ctx context.Context, id string, inUse map[string]bool) error {
	packs, err := r.readRefs(ctx, id)
	if err != nil {
		return fmt.Errorf("backup %s: %w", id, err)
	}
	for _, p := range packs {
		inUse[p] = true
	}
	return nil
}

// runningHolds is what uncommitted backups that may still be running may
// name: all packs and maps of their reference and what its refs.json names
// (and that refs.json), and all packs and indexes of the interrupted
// backups they resume. except is a backup being deleted.
func (r *Repository) runningHolds(ctx context.Context, l backupListing, except string) (map[string]bool, error) {
	inUse := map[string]bool{}
	refsOf := func(id string) error { return r.addRefs(ctx, id, inUse) }
	for _, id := range l.debris {
		if id == except {
			continue
		}
		rec, err := r.ReadStartRecord(ctx, id)
		if errors.Is(err, storage.ErrNotFound) || err == nil && rec.Reference == "" && len(rec.Resume) == 0 {
			continue
		}
		if err != nil {
			// A start record that does not parse could name anything.
			return nil, fmt.Errorf("backup %s: %w", id, err)
		}
		// Interrupted backups it resumes: all their packs (and the
		// indexes it reads) stay while it may still name them.
		for _, src := range rec.Resume {
			if ValidBackupID(src) != nil {
				return nil, fmt.Errorf("backup %s: start record names interrupted backup %q", id, src)
			}
			for _, dir := range []string{"pack/", "index/"} {
				if err := r.backend.List(ctx, BackupPrefix(src)+dir, func(o storage.ObjectInfo) error {
					inUse[o.Name] = true
					return nil
				}); err != nil {
					return nil, err
				}
			}
		}
		if rec.Reference == "" {
			continue
		}
		if ValidBackupID(rec.Reference) != nil {
			return nil, fmt.Errorf("backup %s: start record names reference %q", id, rec.Reference)
		}
		for _, dir := range []string{"pack/", "map/"} {
			if err := r.backend.List(ctx, BackupPrefix(rec.Reference)+dir, func(o storage.ObjectInfo) error {
				inUse[o.Name] = true
				return nil
			}); err != nil {
				return nil, err
			}
		}
		if err := refsOf(rec.Reference); err != nil {
			return nil, err
		}
		// Its refs.json stays too while the reference is deleted: a later
		// delete must still see what the running backup may reference.
		inUse[refsName(rec.Reference)] = true
	}
	return inUse, nil
}

// dropUnreferenced removes the packs of deleted backups (retired: nothing
// but packs left) among refs that no one references any more: deleting
// the last backup that referenced them frees them at once.
func (r *Repository) dropUnreferenced(ctx context.Context, refs []string, inUse map[string]bool, l backupListing) error {
	for _, p := range refs {
		if inUse[p] || !l.retired[packOwner(p)] {
			continue
		}
		if err := r.backend.Delete(ctx, p); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("delete %s: %w", p, err)
		}
	}
	return nil
}

// UpgradeFormat records format 2 in config.json, so that pgkeeps that know
// only format 1 (whose delete would remove packs other backups reference)
// refuse the repository. The repository keeps its ID: one derived from
// config.json's bytes is written into the new config. Idempotent.
func (r *Repository) UpgradeFormat(ctx context.Context) error { return r.upgradeFormat(ctx, 2) }

// upgradeFormat records format to (2: packs shared between backups; 3:
// manifests of format 3 or 4, chunks and file maps).
func (r *Repository) upgradeFormat(ctx context.Context, to int) error {
	if r.Config.Format >= to {
		return nil
	}
	id := r.ID()
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(r.rawConfig, &fields); err != nil {
		return fmt.Errorf("upgrade repository format: %w", err)
	}
	fields["format"] = json.RawMessage(fmt.Sprint(to))
	if _, ok := fields["id"]; !ok {
		b, _ := json.Marshal(id)
		fields["id"] = b
	}
	data, err := json.MarshalIndent(fields, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	if err := r.backend.Put(ctx, ConfigObject, bytes.NewReader(data), storage.PutOptions{}); err != nil {
		return fmt.Errorf("upgrade repository format to %d: %w", to, err)
	}
	r.Config.Format = to
	r.Config.ID = id
	r.rawConfig = data
	return nil
}

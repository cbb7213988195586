package restore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/pgkeep/pgkeep/internal/fsync"
	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
)

// dataDirPlan is the data directory laid out for the download: the
// tablespace locations (pg_tblspc/<oid> -> directory), the files to write
// (created at their final size) and their total size, and what a delta
// restore kept and removed.
type dataDirPlan struct {
	tbl           map[string]string
	todo          []*repo.File
	total         int64
	kept, removed int
	// partial are files a delta restore rewrites in part: copies whose
	// Blocks are only those that differ locally (also in todo).
	partial []*repo.File
}

// prepareDataDir empties (--force) or prunes (--delta) the data directory,
// creates its directories, tablespaces and the files to download, and
// takes pg_control out of the way.
func prepareDataDir(o BackupOptions, m *repo.Manifest, running []pg.RunningCluster) (dataDirPlan, error) {
	var d dataDirPlan
	if o.Force && !o.Delta {
		if err := emptyDir(o.PGData); err != nil {
			return d, fmt.Errorf("empty %s: %w", o.PGData, err)
		}
	}
	if err := os.MkdirAll(o.PGData, 0o700); err != nil {
		return d, err
	}
	os.Chmod(o.PGData, 0o700)
	tbl, err := prepareTablespaces(o.PGData, m, o.TablespaceMap, o.Delta || o.Force, running)
	if err != nil {
		return d, err
	}
	d.tbl = tbl

	// pg_control is made visible last (written under another name, renamed
	// after everything else is on disk): a restore interrupted at any point
	// leaves a directory PostgreSQL refuses to start, never one it would
	// take for a crashed cluster and "recover". A delta restore drops the
	// old one first for the same reason.
	if !slices.ContainsFunc(m.Files, func(f repo.File) bool { return f.Path == controlFile }) {
		return d, fmt.Errorf("backup %s has no %s", m.ID, controlFile)
	}
	if err := removeSynced(filepath.Join(o.PGData, filepath.FromSlash(controlFile))); err != nil {
		return d, err
	}

	// Decide which files to write; with --delta keep the ones that match.
	want := map[string]bool{}
	for i := range m.Files {
		f := &m.Files[i]
		want[f.Path] = true
		if o.Delta && f.Path != controlFile && hasBlockSums(f) {
			// Rewrite only the blocks whose content differs locally.
			diff, localSize, err := differingBlocks(filepath.Join(o.PGData, filepath.FromSlash(f.Path)), f, m.FileBlockSize(f))
			if err == nil && diff != nil {
				if len(diff.Blocks) == 0 && localSize == f.Size {
					d.kept++
					continue
				}
				d.partial = append(d.partial, diff)
				for _, b := range diff.Blocks {
					d.total += b.Size
				}
				continue
			}
		} else if o.Delta {
			if sum, size, err := m.LocalFileChecksum(filepath.Join(o.PGData, filepath.FromSlash(f.Path)), f); err == nil && size == f.Size && sum == f.SHA256 {
				d.kept++
				continue
			}
		}
		if f.Path == controlFile {
			tmp := *f
			tmp.Path = controlTemp
			f = &tmp
		}
		d.todo = append(d.todo, f)
		d.total += f.Size
	}
	if o.Delta {
		n, err := removeExtras(o.PGData, m, want)
		if err != nil {
			return d, err
		}
		d.removed = n
	}
	for _, dir := range m.Dirs {
		if _, isTbl := tbl[dir.Path]; isTbl {
			continue
		}
		if err := os.MkdirAll(filepath.Join(o.PGData, filepath.FromSlash(dir.Path)), fs.FileMode(dir.Mode)|0o700); err != nil {
			return d, err
		}
	}
	for _, f := range d.todo {
		p := filepath.Join(o.PGData, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return d, err
		}
		fh, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, fs.FileMode(f.Mode)|0o600)
		if err == nil {
			err = fh.Truncate(f.Size)
			fh.Close()
		}
		if err != nil {
			return d, fmt.Errorf("create %s: %w", f.Path, err)
		}
	}
	for _, f := range d.partial {
		if err := truncateTo(filepath.Join(o.PGData, filepath.FromSlash(f.Path)), f.Size); err != nil {
			return d, err
		}
	}
	d.todo = append(d.todo, d.partial...)
	return d, nil
}

const (
	controlFile = "global/pg_control"
	controlTemp = "global/pg_control.pgkeep-restore"
)

// removeSynced removes a file, if present, durably.
func removeSynced(p string) error {
	if err := os.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	return fsync.Dir(filepath.Dir(p))
}

// publishControlFile renames the restored pg_control into place: the last
// step of a restore.
func publishControlFile(pgdata string) error {
	final := filepath.Join(pgdata, filepath.FromSlash(controlFile))
	if err := os.Rename(filepath.Join(pgdata, filepath.FromSlash(controlTemp)), final); err != nil {
		return err
	}
	return fsync.Dir(filepath.Dir(final))
}

func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// prepareTablespaces creates each tablespace directory (relocated if asked)
// and the pg_tblspc symlink to it. It returns pg_tblspc/<oid> -> location.
func prepareTablespaces(pgdata string, m *repo.Manifest, remap map[string]string, allowNonEmpty bool, running []pg.RunningCluster) (map[string]string, error) {
	out := map[string]string{}
	for oid := range remap {
		found := false
		for _, t := range m.Tablespaces {
			found = found || t.OID == oid
		}
		if !found {
			return nil, fmt.Errorf("--tablespace-map: the backup has no tablespace with OID %s", oid)
		}
	}
	for _, t := range m.Tablespaces {
		loc := t.Location
		if v, ok := remap[t.OID]; ok {
			loc = v
		}
		if err := checkTablespaceLocation(t.OID, loc, running); err != nil {
			return nil, err
		}
		if entries, err := os.ReadDir(loc); err == nil && len(entries) > 0 && !allowNonEmpty {
			return nil, fmt.Errorf("tablespace %s directory %s is not empty (use --tablespace-map %s=DIR, --delta or --force)", t.OID, loc, t.OID)
		}
		if err := os.MkdirAll(loc, 0o700); err != nil {
			return nil, err
		}
		link := filepath.Join(pgdata, "pg_tblspc", t.OID)
		if err := os.MkdirAll(filepath.Dir(link), 0o700); err != nil {
			return nil, err
		}
		if cur, err := os.Readlink(link); err != nil || cur != loc {
			os.RemoveAll(link)
			if err := os.Symlink(loc, link); err != nil {
				return nil, err
			}
		}
		out["pg_tblspc/"+t.OID] = loc
	}
	return out, nil
}

// removeExtras deletes files a delta restore must not keep: anything the
// backup does not have, and all of pg_wal (stale WAL of another history).
func removeExtras(pgdata string, m *repo.Manifest, want map[string]bool) (int, error) {
	dirs := map[string]bool{}
	for _, d := range m.Dirs {
		dirs[d.Path] = true
	}
	n := 0
	err := filepath.WalkDir(pgdata, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(pgdata, p)
		rel = filepath.ToSlash(rel)
		if rel == "." {
			return nil
		}
		if d.Type()&fs.ModeSymlink != 0 {
			if path.Dir(rel) == "pg_tblspc" && dirs[rel] {
				return nil // walked through its own root below
			}
			n++
			return os.Remove(p)
		}
		if d.IsDir() {
			if !dirs[rel] {
				n++
				if err := os.RemoveAll(p); err != nil {
					return err
				}
				return filepath.SkipDir
			}
			return nil
		}
		if !want[rel] {
			n++
			return os.Remove(p)
		}
		return nil
	})
	if err != nil {
		return n, err
	}
	for _, t := range m.Tablespaces {
		root := filepath.Join(pgdata, "pg_tblspc", t.OID)
		filepath.WalkDir(root+"/", func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			rel, _ := filepath.Rel(pgdata, p)
			if !want[filepath.ToSlash(rel)] {
				n++
				os.Remove(p)
			}
			return nil
		})
	}
	return n, nil
}

// syncAll flushes the data directory's and tablespaces' filesystems:
// syncfs(2) once per filesystem is much faster than fsync per file.
func syncAll(pgdata string, tbl map[string]string) error {
	roots := []string{pgdata}
	for _, loc := range tbl {
		roots = append(roots, loc)
	}
	for _, root := range roots {
		f, err := os.Open(root)
		if err != nil {
			return err
		}
		err = unix.Syncfs(int(f.Fd()))
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

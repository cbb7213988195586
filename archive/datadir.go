package archive

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
)

// sourceFile is a file to back up.
type sourceFile struct {
	Rel  string // slash path in the backup
	Abs  string
	Size int64
	Mode fs.FileMode
	// MTime is the modification time (Unix ns) when the walk saw the file.
	MTime int64
}

// dataDirContents lists what a backup of pgdata holds: files, directories
// (so empty ones are recreated) and tablespaces (pg_tblspc symlinks, whose
// targets are walked as pg_tblspc/<oid>/...).
//
// Any other symlink (a postgresql.conf linked from elsewhere, a linked log
// directory) is followed: its target's content is backed up under the
// link's name, so the restored cluster has the file, and the link is
// reported in followed. It used to be left out silently, and a restored
// cluster whose postgresql.conf was a link did not start.
func dataDirContents(pgdata string) (files []sourceFile, dirs []repo.Dir, tbs []repo.Tablespace, followed []string, err error) {
	seen := map[string]bool{}
	var walk func(root, prefix string) error
	walk = func(root, prefix string) error {
		// WalkDir does not descend into a root that is a symlink: a data
		// directory (or tablespace location) reached through one would be
		// backed up empty.
		if resolved, err := filepath.EvalSymlinks(root); err == nil {
			root = resolved
		} else if !os.IsNotExist(err) || prefix == "" {
			return fmt.Errorf("resolve %s: %w", root, err)
		}
		return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if os.IsNotExist(err) {
					return nil // dropped while we walked
				}
				return err
			}
			rel, _ := filepath.Rel(root, p)
			rel = filepath.ToSlash(rel)
			if prefix != "" {
				rel = path.Join(prefix, rel)
			}
			name := d.Name()
			if rel == "." {
				return nil
			}
			if strings.HasPrefix(name, pg.TempPrefix) {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			if d.Type()&fs.ModeSymlink != 0 {
				if prefix == "" && path.Dir(rel) == "pg_tblspc" {
					target, err := os.Readlink(p)
					if err != nil {
						return err
					}
					tbs = append(tbs, repo.Tablespace{OID: name, Location: target})
					dirs = append(dirs, repo.Dir{Path: rel, Mode: 0o700})
					return nil
				}
				if rel == "pg_wal" {
					dirs = append(dirs, repo.Dir{Path: "pg_wal", Mode: 0o700}, repo.Dir{Path: "pg_wal/archive_status", Mode: 0o700})
					return nil
				}
				return followLink(p, rel, &files, &dirs, &followed, seen, walk)
			}
			info, err := d.Info()
			if err != nil {
				if os.IsNotExist(err) {
					return nil
				}
				return err
			}
			if d.IsDir() {
				dirs = append(dirs, repo.Dir{Path: rel, Mode: uint32(info.Mode().Perm())})
				if prefix == "" && pg.ExcludeDirContents(rel) {
					if rel == "pg_wal" {
						dirs = append(dirs, repo.Dir{Path: "pg_wal/archive_status", Mode: 0o700})
					}
					return filepath.SkipDir
				}
				return nil
			}
			if !info.Mode().IsRegular() {
				return nil
			}
			if pg.ExcludeFile(rel, prefix == "") {
				return nil
			}
			files = append(files, sourceFile{Rel: rel, Abs: p, Size: info.Size(), Mode: info.Mode().Perm(), MTime: info.ModTime().UnixNano()})
			return nil
		})
	}
	if err := walk(pgdata, ""); err != nil {
		return nil, nil, nil, nil, fmt.Errorf("read data directory: %w", err)
	}
	for _, tb := range tbs {
		if err := walk(tb.Location, "pg_tblspc/"+tb.OID); err != nil {
			return nil, nil, nil, nil, fmt.Errorf("read tablespace %s (%s): %w", tb.OID, tb.Location, err)
		}
	}
	files = dropUnlogged(files)
	sort.Slice(files, func(i, j int) bool { return files[i].Rel < files[j].Rel })
	return files, dirs, tbs, followed, nil
}

// followLink backs up what the symlink at p (rel in the backup) points to:
// a file's content, or a directory's tree, once per target.
func followLink(p, rel string, files *[]sourceFile, dirs *[]repo.Dir, followed *[]string, seen map[string]bool, walk func(root, prefix string) error) error {
	target, err := filepath.EvalSymlinks(p)
	if err != nil {
		return fmt.Errorf("%s is a symlink pgkeep cannot follow: %w", rel, err)
	}
	if seen[target] {
		return fmt.Errorf("%s is a symlink to %s, which the backup already holds (a loop?)", rel, target)
	}
	seen[target] = true
	info, err := os.Stat(target)
	if err != nil {
		return fmt.Errorf("%s -> %s: %w", rel, target, err)
	}
	*followed = append(*followed, rel+" -> "+target)
	switch {
	case info.Mode().IsRegular():
		*files = append(*files, sourceFile{Rel: rel, Abs: target, Size: info.Size(), Mode: info.Mode().Perm()})
		return nil
	case info.IsDir():
		*dirs = append(*dirs, repo.Dir{Path: rel, Mode: uint32(info.Mode().Perm())})
		return walk(target, rel)
	}
	return fmt.Errorf("%s is a symlink to %s, which is neither a file nor a directory", rel, target)
}

// dropUnlogged leaves out every fork but the init fork of unlogged
// relations: recovery resets them from the init fork anyway.
func dropUnlogged(files []sourceFile) []sourceFile {
	unlogged := map[string]bool{} // dir + "/" + relfilenode
	for _, f := range files {
		if node, fork, ok := pg.RelationFork(path.Base(f.Rel)); ok && fork == "init" {
			unlogged[path.Dir(f.Rel)+"/"+node] = true
		}
	}
	if len(unlogged) == 0 {
		return files
	}
	out := files[:0]
	for _, f := range files {
		if node, fork, ok := pg.RelationFork(path.Base(f.Rel)); ok && fork != "init" && unlogged[path.Dir(f.Rel)+"/"+node] {
			continue
		}
		out = append(out, f)
	}
	return out
}

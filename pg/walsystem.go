package pg

import "path/filepath"

// ArchiveDataDir is the data directory the WAL file walPath that
// archive_command was given belongs to: pgdata when configured, else the
// parent of its pg_wal for an absolute path, else the current directory
// (PostgreSQL runs archive_command in the data directory with a relative
// %p).
func ArchiveDataDir(walPath, pgdata string) string {
	switch {
	case pgdata != "":
		return pgdata
	case filepath.IsAbs(walPath):
		return filepath.Dir(filepath.Dir(walPath))
	}
	return "."
}

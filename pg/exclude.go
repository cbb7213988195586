package pg

import (
	"regexp"
	"strings"
)

// What a base backup leaves out, following PostgreSQL's own list for
// pg_basebackup (src/backend/backup/basebackup.c) plus the recovery signal
// files, which restore writes itself.
var (
	// Directories kept, but empty.
	excludeDirContents = map[string]bool{
		"pg_stat_tmp": true, "pg_replslot": true, "pg_dynshmem": true, "pg_notify": true,
		"pg_serial": true, "pg_snapshots": true, "pg_subtrans": true, "pg_wal": true,
	}
	// Files left out wherever they are.
	excludeFilesAnywhere = map[string]bool{"pg_internal.init": true}
	// Files left out at the top level.
	excludeTopFiles = map[string]bool{
		"postgresql.auto.conf.tmp": true, "current_logfiles": true, "backup_label": true,
		"tablespace_map": true, "postmaster.pid": true, "postmaster.opts": true,
		"backup_manifest": true, "standby.signal": true, "recovery.signal": true,
		"backup_label.old": true,
	}
	tempRelRE = regexp.MustCompile(`^t[0-9]+_[0-9]+`)
	relRE     = regexp.MustCompile(`^([0-9]+)(_[a-z]+)?(\.[0-9]+)?$`)
)

// TempPrefix starts the name of temporary files and directories
// (pgsql_tmp*), which a backup leaves out wherever they are.
const TempPrefix = "pgsql_tmp"

// ExcludeDirContents says whether a backup keeps the top-level directory
// rel (a slash path in the data directory) but none of its content.
func ExcludeDirContents(rel string) bool { return excludeDirContents[rel] }

// ExcludeFile says whether a backup leaves out the regular file rel, a
// slash path in the data directory (topLevel: directly in it, not in a
// tablespace or a followed link).
func ExcludeFile(rel string, topLevel bool) bool {
	name := rel
	if i := strings.LastIndexByte(rel, '/'); i >= 0 {
		name = rel[i+1:]
	}
	if strings.HasPrefix(name, TempPrefix) || excludeFilesAnywhere[name] || tempRelRE.MatchString(name) {
		return true
	}
	return topLevel && !strings.Contains(rel, "/") && excludeTopFiles[name]
}

// RelationFork splits a relation file name (16384, 16384_fsm, 16384.2,
// 16384_init) into its relfilenode and fork ("" for the main fork).
func RelationFork(name string) (relfilenode, fork string, ok bool) {
	m := relRE.FindStringSubmatch(name)
	if m == nil {
		return "", "", false
	}
	return m[1], strings.TrimPrefix(m[2], "_"), true
}

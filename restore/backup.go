package restore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/pgkeep/pgkeep/repo"
)

// Progress receives a restore's progress (bytes written).
type Progress interface {
	Start(total int64)
	Add(n int64)
	Finish()
}

// BackupOptions configures a restore of a base backup.
type BackupOptions struct {
	PGData   string
	BackupID string // "" or "latest": chosen from the target
	Target   Target // ParseTarget's; the zero value replays all WAL
	// Standby writes standby.signal instead of recovery.signal.
	Standby bool
	// RetryInterval, with Standby, is written as wal_retrieve_retry_interval
	// (0: PostgreSQL's 5 s) unless the backup's postgresql.auto.conf sets
	// it: how soon a standby whose first attempt to stream failed tries
	// again (see docs/patroni.md, "The first seconds of a new replica").
	RetryInterval time.Duration
	// Delta keeps files whose size and checksum match the backup.
	Delta bool
	// Force empties a non-empty data directory first.
	Force bool
	// RestoreCommand is written as restore_command.
	RestoreCommand string
	// ArchiveModeOff writes archive_mode = off (pgkeep restore
	// --archive-mode off): a test copy that is promoted must never push its
	// new timeline into the repository it came from.
	ArchiveModeOff bool
	// NoRecoveryConfig writes backup_label and tablespace_map but no
	// recovery settings and no signal file: for Patroni's bootstrap, which
	// writes its own recovery_conf (settings left in postgresql.auto.conf
	// would outlive the bootstrap and override Patroni's).
	NoRecoveryConfig bool
	// TablespaceMap relocates tablespaces: OID -> new directory.
	TablespaceMap map[string]string
	// Timeline is the timeline recovery will follow, when the caller knows
	// it (create-replica: the leader's); 0 means the recovery target
	// timeline (a number, or for latest the newest archived). Only a backup
	// on its history can be chosen: PostgreSQL refuses any other.
	Timeline uint32
	// Workers download and write in parallel (0 = 4).
	Workers int
	// WALPrefetchBytes bounds the WAL downloaded into the prefetch
	// directory while the base files are written (restore.wal_prefetch_bytes),
	// WALWorkers at a time; 0 downloads none.
	WALPrefetchBytes int64
	WALWorkers       int
	// WALProcess, when set, runs the bulk WAL download in a detached
	// process that goes on after the restore returns (pgkeep restore);
	// nil downloads it in this process before returning.
	WALProcess *PrefetchProcess
	Progress   Progress
	Logger     *slog.Logger
}

// BackupResult says what a restore did.
type BackupResult struct {
	BackupID        string
	FilesWritten    int
	FilesKept       int
	FilesRemoved    int
	BytesWritten    int64
	BytesDownloaded int64
	// WAL is what the bulk WAL download left in the prefetch directory.
	WAL BulkWALResult
}

// ErrPostmasterRunning means the target directory belongs to a live server.
var ErrPostmasterRunning = errors.New("a postmaster is running in the data directory; stop it first")

// Backup restores a base backup into o.PGData and writes the recovery
// configuration; everything is on disk (fsynced) when it returns nil.
//
// The stages, each in its own file: choose the backup and check that the
// restore can succeed before anything is written (choose.go), lay out the
// data directory (datadir.go), download the blocks into it (download.go)
// while the WAL recovery needs first is prefetched (walprefetch.go), then
// write the recovery configuration (recoveryconf.go) and make pg_control
// visible last.
func Backup(ctx context.Context, r *repo.Repository, o BackupOptions) (res BackupResult, err error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.Workers <= 0 {
		o.Workers = 4
	}
	p, err := planRestore(ctx, r, o, log)
	if err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	m := p.m
	res.BackupID = m.ID
	log.Info("restoring", "backup", m.ID, "pgdata", o.PGData, "stop_time", m.StopTime, "stop_lsn", m.StopLSN, "delta", o.Delta)

	d, err := prepareDataDir(o, m, p.running)
	if err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	res.FilesKept, res.FilesRemoved = d.kept, d.removed

	// The WAL recovery will read is downloaded while the base files are
	// written, so recovery finds it local from its first request.
	bulk := startBulkWAL(ctx, r, m, o, p.tli, p.history, log)
	defer bulk.stop()
	defer func() {
		if err != nil && bulk.abort != nil {
			bulk.abort() // a failed restore leaves no download behind
		}
	}()
	if o.Progress != nil {
		o.Progress.Start(d.total)
	}
	dl, written, err := fetchBlocks(ctx, r, m, d.todo, o.PGData, o.Workers, o.Progress)
	if o.Progress != nil {
		o.Progress.Finish()
	}
	res.BytesDownloaded, res.BytesWritten = dl, written
	res.FilesWritten = len(d.todo)
	if err != nil {
		bulk.stop()
		bulk.wait()
		return res, fmt.Errorf("restore: %w", err)
	}
	wal, err := bulk.wait()
	res.WAL = wal
	if err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	if err := writeRecoveryFiles(o, m, d.tbl); err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	if err := syncAll(o.PGData, d.tbl); err != nil {
		return res, fmt.Errorf("restore: fsync: %w", err)
	}
	if err := publishControlFile(o.PGData); err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	log.Info("restore complete", "backup", m.ID, "files_written", res.FilesWritten, "files_kept", res.FilesKept,
		"files_removed", res.FilesRemoved, "bytes_downloaded", res.BytesDownloaded,
		"wal_segments_local", res.WAL.Segments, "wal_complete", res.WAL.Complete)
	return res, nil
}

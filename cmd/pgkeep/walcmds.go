package main

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/pgkeep/pgkeep/archive"
	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/restore"
	"github.com/pgkeep/pgkeep/storage"
)

func newWALPushCmd(a *app) *cobra.Command {
	return withConfig(&cobra.Command{
		Use:   "wal-push PATH",
		Short: "Archive one WAL file (PostgreSQL's archive_command)",
		Long: `wal-push stores the WAL file at PATH in the repository and exits 0 only once it is
durably stored. Pushing a file identical to the archived one succeeds; a different
file under an archived name fails and the archived copy is kept.

Up to wal.push_ahead other files that PostgreSQL has marked .ready are pushed in
the same call, so the archiver's next calls return at once.

Each segment's block map (the relation blocks its records changed, for incremental
backups) is stored beside it unless wal.block_maps is false; a map that cannot be
built or stored is a warning, never a failure.`,
		Example: `  # postgresql.conf
  archive_mode = on
  archive_command = 'pgkeep wal-push %p'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			lazyGC()
			ctx := cmd.Context()
			r, err := openWALRepo(ctx, a.cfg)
			if err != nil {
				return fmt.Errorf("push %s: %w", filepath.Base(args[0]), err)
			}
			return archive.PushWAL(ctx, r, archive.PushOptions{
				Path:             args[0],
				PushAhead:        a.cfg.WAL.PushAhead,
				Concurrency:      a.cfg.UploadConcurrency,
				SystemIdentifier: a.systemIdentifier(args[0]),
				NoBlockMaps:      !a.cfg.WAL.BlockMaps,
				Logger:           a.log,
			})
		},
	})
}

// lazyGC suits the short processes PostgreSQL starts per WAL file: they
// allocate a few segments' worth of memory and exit, so collecting garbage
// on the way only costs time. The limit keeps a collection possible should
// one run allocate far more than that.
func lazyGC() {
	debug.SetGCPercent(-1)
	debug.SetMemoryLimit(512 << 20)
}

// systemIdentifier reads pg_control of the data directory walPath belongs
// to: PostgreSQL runs archive_command in the data directory with a relative
// %p. Unknown (0) disables the check rather than failing the archiver.
func (a *app) systemIdentifier(walPath string) uint64 {
	id, err := pg.SystemIdentifier(pg.ArchiveDataDir(walPath, a.cfg.PGData))
	if err != nil {
		a.log.Debug("system identifier unknown", "err", err)
		return 0
	}
	return id
}

func newWALFetchCmd(a *app) *cobra.Command {
	cmd := withConfig(&cobra.Command{
		Use:   "wal-fetch NAME PATH",
		Short: "Restore one archived WAL file (PostgreSQL's restore_command)",
		Long: `wal-fetch writes the archived WAL file NAME to PATH (via a temporary file, fsynced,
then renamed). Exit 1 without output means the repository answered that the file is
not in the archive, which PostgreSQL expects while it probes for files.

Storage errors are retried with backoff for wal.fetch_retry_time. A failure that
remains (storage still down, wrong key, corrupt object, bad configuration) exits 2
in standby mode (standby.signal: PostgreSQL retries by itself) and 255 otherwise,
which makes PostgreSQL stop archive recovery with a FATAL error instead of taking
the failure for the end of the archive and promoting early.

When PATH is PostgreSQL's recovery file (pg_wal/RECOVERYXLOG), a background
process fetches and verifies the next wal.prefetch segments of the timeline, so
sequential recovery does not wait one round trip per segment.`,
		Example: `  # postgresql.conf (or Patroni's recovery_conf)
  restore_command = 'pgkeep wal-fetch %f %p'`,
		Args: func(cmd *cobra.Command, args []string) error {
			if err := cobra.ExactArgs(2)(cmd, args); err != nil {
				// Even a malformed restore_command must not read as "missing".
				return restore.FailFetch("", err)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			lazyGC()
			return restore.FetchForRecovery(cmd.Context(), restore.RecoveryFetchOptions{
				Name: args[0],
				Dest: args[1],
				Open: func(ctx context.Context) (*repo.Repository, error) {
					return openRepoWrapped(ctx, a.cfg, a.cfg.Compression.Level, storage.TagUnavailable)
				},
				RetryTime: a.cfg.WAL.FetchRetryTime,
				Prefetch:  a.prefetchProcess(),
				Logger:    a.log,
			})
		},
	})
	// A configuration that cannot be loaded is a failure like any other
	// for PostgreSQL: never "missing", and FATAL in archive recovery.
	a.onLoadError(cmd, func(args []string, err error) error {
		return restore.FailFetch(args[1], fmt.Errorf("fetch %s: %w", args[0], err))
	})
	return cmd
}

// prefetchProcess is how wal-fetch starts `pgkeep wal-prefetch`: with the
// --config this process was given, so the child reads the same settings.
func (a *app) prefetchProcess() restore.PrefetchProcess {
	p := restore.PrefetchProcess{Count: a.cfg.WAL.Prefetch, BudgetBytes: int64(a.cfg.Restore.WALPrefetchBytes)}
	if a.configFlag != "" {
		p.GlobalArgs = []string{"--config", a.configFlag}
	}
	return p
}

func newWALPrefetchCmd(a *app) *cobra.Command {
	var o restore.PrefetchOptions
	var bulk bool
	cmd := withConfig(&cobra.Command{
		Use:     "wal-prefetch",
		Short:   "Fetch the WAL segments after --after into --dir (started by wal-fetch)",
		Hidden:  true,
		Example: `  pgkeep wal-prefetch --after 000000010000000000000010 --dir pg_wal/pgkeep/prefetch --segment-size 16777216`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			r, err := openRepo(ctx, a.cfg)
			if err != nil {
				return err
			}
			if bulk {
				return restore.RunBulkPlan(ctx, r, o.Dir, restore.BulkWALOptions{Concurrency: a.cfg.DownloadConcurrency, Logger: a.log})
			}
			if o.After == "" {
				return &configError{"--after is required"}
			}
			o.Count = restore.PrefetchCount(a.cfg.WAL.Prefetch, int64(a.cfg.Restore.WALPrefetchBytes), o.SegmentSize)
			o.Concurrency = a.cfg.DownloadConcurrency
			o.Logger = a.log
			return restore.Prefetch(ctx, r, o)
		},
	})
	cmd.Flags().StringVar(&o.After, "after", "", "segment just fetched")
	cmd.Flags().StringVar(&o.Dir, "dir", "", "prefetch directory")
	cmd.Flags().Int64Var(&o.SegmentSize, "segment-size", pg.DefaultSegmentSize, "WAL segment size in bytes")
	cmd.Flags().BoolVar(&bulk, "bulk", false, "work through the bulk WAL download plan a restore left in --dir")
	cmd.MarkFlagRequired("dir")
	return cmd
}

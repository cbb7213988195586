package main

import (
	"fmt"
	"path/filepath"
	"runtime"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgkeep/pgkeep/archive"
	"github.com/pgkeep/pgkeep/inspect"
	"github.com/pgkeep/pgkeep/maintain"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/restore"
)

func newBackupCmd(a *app) *cobra.Command {
	var (
		pgdata, checkpoint, checksumFailures string
		backupType, reference                string
		walTimeout                           time.Duration
		annotations                          []string
	)
	cmd := withConfig(&cobra.Command{
		Use:   "backup",
		Short: "Take an online base backup of the local cluster (full or incremental)",
		Long: `backup takes a full base backup of the PostgreSQL cluster on this host (primary or
standby) into the repository: files are read straight from the data directory and
tablespaces, checked against their data checksums when the cluster has them,
compressed, encrypted and uploaded in parallel. Every backup is whole: an incremental
(--type incr, the default once a backup exists) stores only blocks that changed since
its reference and names the reference's blocks for the rest, so it restores and can be
deleted on its own. The backup waits until the WAL it
needs is archived, and becomes visible only once its manifest is written.

The connection comes from postgres.dsn or the libpq PG* variables and needs a
superuser or a role with pg_backup_start/pg_backup_stop and pg_read_all_settings.`,
		Example: `  pgkeep backup
  pgkeep backup --checkpoint spread --pgdata /var/lib/postgresql/15/main
  pgkeep backup list
  pgkeep backup show 20261122T180000Z-1a2b --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if checkpoint != "fast" && checkpoint != "spread" {
				return &configError{fmt.Sprintf("--checkpoint %q: use fast or spread", checkpoint)}
			}
			if checksumFailures != "error" && checksumFailures != "warn" {
				return &configError{fmt.Sprintf("--checksum-failures %q: use error or warn", checksumFailures)}
			}
			if pgdata != "" && !filepath.IsAbs(pgdata) {
				return &configError{fmt.Sprintf("--pgdata %q must be an absolute path", pgdata)}
			}
			if err := archive.ValidType(backupType); err != nil {
				return &configError{err.Error()}
			}
			notes, err := repo.ParseAnnotations(annotations)
			if err != nil {
				return &configError{err.Error()}
			}
			ctx := cmd.Context()
			r, err := openRepo(ctx, a.cfg)
			if err != nil {
				return err
			}
			if pgdata == "" {
				pgdata = a.cfg.PGData
			}
			return maintain.Backup(ctx, r, maintain.BackupOptions{
				Backup: archive.BackupOptions{
					DSN:              a.cfg.Postgres.DSN,
					PGData:           pgdata,
					FastCheckpoint:   checkpoint == "fast",
					ChecksumWarnOnly: checksumFailures == "warn",
					Workers:          backupWorkers(a.cfg),
					Writers:          a.cfg.UploadConcurrency,
					WALTimeout:       walTimeout,
					Progress:         newProgress("backup", a.log),
					Annotations:      notes,
					Logger:           a.log,
					Type:             backupType,
					Reference:        reference,
				},
				RetainFull: a.cfg.Retention.Full,
				RetainDays: a.cfg.Retention.Days,
				Out:        cmd.OutOrStdout(),
				Log:        cmd.ErrOrStderr(),
			})
		},
	})
	cmd.Flags().StringVar(&pgdata, "pgdata", "", "data directory (default: config pgdata, else the server's data_directory)")
	cmd.Flags().StringVar(&checkpoint, "checkpoint", "fast", "checkpoint at start: fast (start now) or spread (gentler on I/O)")
	cmd.Flags().StringVar(&checksumFailures, "checksum-failures", "error", "a data page failing its checksum: error (fail the backup) or warn")
	cmd.Flags().DurationVar(&walTimeout, "wal-timeout", 5*time.Minute, "how long to wait for the backup's WAL to be archived")
	cmd.Flags().StringVar(&backupType, "type", "", "full (store everything), incr (reuse files unchanged by size and mtime, and unchanged blocks, of the reference) or checksum (read every file, reuse unchanged blocks); default incr when a backup of this system exists, else full")
	cmd.Flags().StringVar(&reference, "reference", "", "backup ID an incr or checksum backup reuses blocks of (default: the newest)")
	cmd.Flags().StringArrayVar(&annotations, "annotation", nil, "key=value stored with the backup (repeatable; shown by list, show and info)")
	cmd.AddCommand(newBackupListCmd(a), newBackupShowCmd(a), newBackupKeepCmd(a), newBackupUnkeepCmd(a))
	return cmd
}

// backupWorkers is backup.concurrency, or one more than GOMAXPROCS (the
// CPUs the process may use, which since Go 1.25 honours a cgroup CPU
// quota): a worker waiting on a read or a full pack queue then leaves no
// CPU idle. Measured (bench/backup.sh, pgbench scale 100, 2 cores, 2 runs
// each): 2 workers 3.21 s and 5.19 CPU-s, 3 workers 2.49 s and 3.75 CPU-s.
func backupWorkers(cfg Config) int {
	if cfg.Backup.Concurrency > 0 {
		return cfg.Backup.Concurrency
	}
	return runtime.GOMAXPROCS(0) + 1
}

func newBackupKeepCmd(a *app) *cobra.Command {
	var until string
	cmd := withConfig(&cobra.Command{
		Use:   "keep ID",
		Short: "Keep a backup, and the WAL it needs, whatever retention says",
		Long: `keep marks a backup kept (backups/<id>/keep.json): retention (delete --retain-full,
--retain-days, the retention config keys, daemon retention jobs) never removes it,
nor the WAL from its start on, and delete --backup refuses it. With --until the
keep ends at that time. Marking a kept backup again replaces its keep.`,
		Example: "  pgkeep backup keep 20261122T180000Z-1a2b\n  pgkeep backup keep 20261122T180000Z-1a2b --until 2027-01-01T00:00:00Z",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := repo.ValidBackupID(args[0]); err != nil {
				return &configError{err.Error()}
			}
			var u *time.Time
			if until != "" {
				t, err := restore.ParseTargetTime(until)
				if err != nil {
					return &configError{"--until: " + err.Error()}
				}
				u = &t
			}
			ctx := cmd.Context()
			r, err := openRepo(ctx, a.cfg)
			if err != nil {
				return err
			}
			return maintain.Keep(ctx, r, args[0], u, cmd.OutOrStdout())
		},
	})
	cmd.Flags().StringVar(&until, "until", "", "end the keep at this time (RFC 3339 with a zone)")
	return cmd
}

func newBackupUnkeepCmd(a *app) *cobra.Command {
	return withConfig(&cobra.Command{
		Use:     "unkeep ID",
		Short:   "Let retention remove a kept backup again",
		Example: "  pgkeep backup unkeep 20261122T180000Z-1a2b",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := repo.ValidBackupID(args[0]); err != nil {
				return &configError{err.Error()}
			}
			ctx := cmd.Context()
			r, err := openRepo(ctx, a.cfg)
			if err != nil {
				return err
			}
			return maintain.Unkeep(ctx, r, args[0], cmd.OutOrStdout())
		},
	})
}

func newBackupListCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := withConfig(&cobra.Command{
		Use:     "list",
		Short:   "List the backups in the repository",
		Example: "  pgkeep backup list\n  pgkeep backup list --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			r, err := openRepo(ctx, a.cfg)
			if err != nil {
				return err
			}
			return inspect.ListBackups(ctx, r, asJSON, cmd.OutOrStdout())
		},
	})
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newBackupShowCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := withConfig(&cobra.Command{
		Use:     "show ID",
		Short:   "Show one backup",
		Example: "  pgkeep backup show 20261122T180000Z-1a2b",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			r, err := openRepo(ctx, a.cfg)
			if err != nil {
				return err
			}
			return inspect.ShowBackup(ctx, r, args[0], asJSON, cmd.OutOrStdout())
		},
	})
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

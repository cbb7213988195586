package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pgkeep/pgkeep/internal/human"
	"github.com/pgkeep/pgkeep/restore"
)

func newRestoreCmd(a *app) *cobra.Command {
	var (
		o           restore.BackupOptions
		tf          *targetFlags
		archiveMode string
		tblspace    []string
	)
	cmd := withConfig(&cobra.Command{
		Use:   "restore",
		Short: "Restore a base backup, to the latest state or to a point in time",
		Long: `restore writes a base backup into --pgdata and configures recovery: restore_command
(pgkeep wal-fetch) and the recovery target in postgresql.auto.conf, plus
recovery.signal (or standby.signal with --standby). Start PostgreSQL afterwards and it
replays archived WAL up to the target.

--archive-mode off writes archive_mode = off, for a copy (test, reporting, a
rehearsal) that must never push a new timeline into the production repository once
promoted; the default, preserve, keeps the backup's archive_mode, as a restore that
replaces the production cluster needs.

Without --backup, the newest backup that ended before the target is used. It refuses
a data directory with a running postmaster, and a non-empty one unless --delta (keep
files that match the backup, rewrite the rest, delete extras) or --force (empty it).`,
		Example: `  pgkeep restore --pgdata /var/lib/postgresql/15/main
  pgkeep restore --pgdata /srv/pitr --target-time '2026-11-22 17:59:00+00' --target-action promote
  pgkeep restore --pgdata /var/lib/postgresql/15/main --delta --target-lsn 0/5000060
  pgkeep restore --pgdata /srv/copy --backup 20261122T180000Z-1a2b --target immediate --archive-mode off
  pgkeep restore --pgdata /srv/copy --tablespace-map 16400=/srv/copy-ts`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch archiveMode {
			case "preserve":
			case "off":
				o.ArchiveModeOff = true
			default:
				return &configError{fmt.Sprintf("--archive-mode %q: use off or preserve", archiveMode)}
			}
			o.TablespaceMap = map[string]string{}
			for _, kv := range tblspace {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" || v == "" {
					return &configError{fmt.Sprintf("--tablespace-map %q: use OID=DIRECTORY", kv)}
				}
				if !filepath.IsAbs(v) {
					return &configError{fmt.Sprintf("--tablespace-map %q: the directory must be an absolute path", kv)}
				}
				o.TablespaceMap[k] = v
			}
			if !filepath.IsAbs(o.PGData) {
				return &configError{fmt.Sprintf("--pgdata %q must be an absolute path", o.PGData)}
			}
			t, err := tf.parse()
			if err != nil {
				return err
			}
			o.Target = t
			ctx := cmd.Context()
			r, err := openRepo(ctx, a.cfg)
			if err != nil {
				return err
			}
			o.RestoreCommand = a.restoreCommand()
			o.Workers = a.cfg.DownloadConcurrency
			o.WALPrefetchBytes, o.WALWorkers = int64(a.cfg.Restore.WALPrefetchBytes), a.cfg.DownloadConcurrency
			// The bulk WAL download goes on in the background while the
			// restored cluster starts recovering (docs/wal.md).
			wp := a.prefetchProcess()
			o.WALProcess = &wp
			o.Logger = a.log
			o.Progress = newProgress("restore", a.log)
			res, err := restore.Backup(ctx, r, o)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "restored backup %s into %s: %d files written, %d kept, %d removed, %s downloaded\n",
				res.BackupID, o.PGData, res.FilesWritten, res.FilesKept, res.FilesRemoved, human.Bytes(res.BytesDownloaded))
			if w := res.WAL; w.Background {
				fmt.Fprintf(cmd.OutOrStdout(), "downloading %d WAL segments into pg_wal/pgkeep/prefetch in the background (pid %d, %d there already); start the cluster now\n", w.Planned, w.PID, w.Segments)
			} else if w.Segments > 0 {
				more := "every segment recovery needs"
				if !w.Complete {
					more = "recovery's wal-fetch fetches the rest"
				}
				fmt.Fprintf(cmd.OutOrStdout(), "downloaded %d WAL segments (%s) into pg_wal/pgkeep/prefetch: %s\n", w.Segments, human.Bytes(w.Bytes), more)
			}
			if !o.ArchiveModeOff && !o.Standby {
				a.log.Info("archive_mode is kept from the backup: once promoted, the restored cluster archives like the original; restore a test copy with --archive-mode off")
			}
			return nil
		},
	})
	f := cmd.Flags()
	f.StringVar(&o.PGData, "pgdata", "", "data directory to restore into (absolute path)")
	f.StringVar(&o.BackupID, "backup", "", "backup ID or latest (default: newest backup before the target)")
	tf = addTargetFlags(f, true)
	f.BoolVar(&o.Standby, "standby", false, "write standby.signal: start as a standby")
	f.StringVar(&archiveMode, "archive-mode", "preserve", "preserve: keep the backup's archive_mode (a restore that replaces the cluster); off: write archive_mode = off (a test copy that must never archive into this repository)")
	f.BoolVar(&o.Delta, "delta", false, "reuse files that match the backup; rewrite the rest, delete extras")
	f.BoolVar(&o.Force, "force", false, "empty a non-empty data directory first")
	f.StringArrayVar(&tblspace, "tablespace-map", nil, "OID=DIR: restore a tablespace somewhere else (repeatable)")
	cmd.MarkFlagRequired("pgdata")
	return cmd
}

// shellQuote quotes s for the sh -c PostgreSQL runs restore_command with.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-=") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// restoreCommand is the restore_command a restored cluster gets: this very
// binary, with the absolute path of the config file this run read, however
// it was named (--config, $PGKEEP_CONFIG or the default path): the
// postmaster's environment need not have PGKEEP_CONFIG, and may even name
// another file. Settings that came only from PGKEEP_* variables cannot be
// carried without putting them (maybe secrets) on the command line, so
// they are named in a warning.
func (a *app) restoreCommand() string {
	exe, err := os.Executable()
	if err != nil {
		exe = "pgkeep"
	}
	cmd := shellQuote(exe)
	if a.cfg.file != "" {
		path := a.cfg.file
		if abs, err := filepath.Abs(path); err == nil {
			path = abs
		}
		cmd += " --config " + shellQuote(path)
	} else {
		a.log.Warn("no config file was read: the restored cluster's restore_command will use the defaults and the PGKEEP_* variables of the postmaster's environment", "path", a.configPath)
	}
	if len(a.cfg.fromEnv) > 0 {
		a.log.Warn("settings from environment variables are not part of the restored cluster's restore_command; give the postmaster the same variables or move them into the config file",
			"variables", strings.Join(a.cfg.fromEnv, ","))
	}
	return restore.TakePrefetchedShell() + "exec " + cmd + " wal-fetch %f %p"
}

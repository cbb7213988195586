package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgkeep/pgkeep/archive"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/restore"
)

func newBackupCmd(a *app) *cobra.Command {
	var (
		pgdata, checkpoint, checksumFailures string
		walTimeout                           time.Duration
		annotations                          []string
	)
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Take a full online base backup of the local cluster",
		Long: `backup takes a full base backup of the PostgreSQL cluster on this host (primary or
standby) into the repository: files are read straight from the data directory and
tablespaces, checked against their data checksums when the cluster has them,
compressed, encrypted and uploaded in parallel. The backup waits until the WAL it
needs is archived, and becomes visible only once its manifest is written.

The connection comes from postgres.dsn or the libpq PG* variables and needs a
superuser or a role with pg_backup_start/pg_backup_stop and pg_read_all_settings.`,
		Example: `  pgkeep backup
  pgkeep backup --checkpoint spread --pgdata /var/lib/postgresql/15/main
  pgkeep backup list
  pgkeep backup show 20261122T180000Z-1a2b --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.load(); err != nil {
				return err
			}
			if checkpoint != "fast" && checkpoint != "spread" {
				return &configError{fmt.Sprintf("--checkpoint %q: use fast or spread", checkpoint)}
			}
			if checksumFailures != "error" && checksumFailures != "warn" {
				return &configError{fmt.Sprintf("--checksum-failures %q: use error or warn", checksumFailures)}
			}
			if pgdata != "" && !filepath.IsAbs(pgdata) {
				return &configError{fmt.Sprintf("--pgdata %q must be an absolute path", pgdata)}
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
			m, err := archive.Backup(ctx, r, archive.BackupOptions{
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
			})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), m.ID)
			return applyConfiguredRetention(ctx, a, r, cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&pgdata, "pgdata", "", "data directory (default: config pgdata, else the server's data_directory)")
	cmd.Flags().StringVar(&checkpoint, "checkpoint", "fast", "checkpoint at start: fast (start now) or spread (gentler on I/O)")
	cmd.Flags().StringVar(&checksumFailures, "checksum-failures", "error", "a data page failing its checksum: error (fail the backup) or warn")
	cmd.Flags().DurationVar(&walTimeout, "wal-timeout", 5*time.Minute, "how long to wait for the backup's WAL to be archived")
	cmd.Flags().StringArrayVar(&annotations, "annotation", nil, "key=value stored with the backup (repeatable; shown by list, show and info)")
	cmd.AddCommand(newBackupListCmd(a), newBackupShowCmd(a), newBackupKeepCmd(a), newBackupUnkeepCmd(a))
	return cmd
}

// backupWorkers is backup.concurrency, or GOMAXPROCS: the CPUs the process
// may use, which (Go >= 1.25) honours a cgroup CPU quota.
func backupWorkers(cfg Config) int {
	if cfg.Backup.Concurrency > 0 {
		return cfg.Backup.Concurrency
	}
	return runtime.GOMAXPROCS(0)
}

// applyConfiguredRetention applies retention.full / retention.days after a
// successful backup. The backup is committed whatever happens here; a
// failure is the command's failure so that it is seen.
func applyConfiguredRetention(ctx context.Context, a *app, r *repo.Repository, log io.Writer) error {
	rc := a.cfg.Retention
	if rc.Full == 0 && rc.Days == 0 {
		return nil
	}
	plan, err := r.PlanRetention(ctx, repo.RetentionOptions{RetainFull: rc.Full, RetainDays: rc.Days, DebrisMinAge: time.Hour, Now: time.Now()})
	if err == nil {
		err = r.ApplyRetention(ctx, plan)
	}
	if err != nil {
		return fmt.Errorf("backup committed, but retention failed: %w", err)
	}
	printPlan(log, plan, "deleted", "retention: ")
	return nil
}

// printPlan prints one line per backup and, when anything goes, a line of
// totals (not one per WAL file: there may be thousands).
func printPlan(out io.Writer, plan repo.RetentionPlan, verb, prefix string) {
	for _, id := range plan.Backups {
		fmt.Fprintf(out, "%s%s backup %s\n", prefix, verb, id)
	}
	for _, id := range plan.Debris {
		fmt.Fprintf(out, "%s%s incomplete backup %s\n", prefix, verb, id)
	}
	for _, id := range plan.Kept {
		fmt.Fprintf(out, "%skept backup %s (backup keep)\n", prefix, id)
	}
	if len(plan.Backups)+len(plan.Debris)+len(plan.WAL) == 0 {
		return // nothing goes: nothing to total
	}
	fmt.Fprintf(out, "%s%s %d backup(s) (%s), %d incomplete backup(s) (%s) and %d WAL file(s) (%s): %s in all\n", prefix, verb,
		len(plan.Backups), humanBytes(plan.BackupBytes), len(plan.Debris), humanBytes(plan.DebrisBytes),
		len(plan.WAL), humanBytes(plan.WALBytes), humanBytes(plan.BackupBytes+plan.DebrisBytes+plan.WALBytes))
	if len(plan.WAL) > 0 {
		fmt.Fprintf(out, "%sWAL %s: %s .. %s\n", prefix, verb, path.Base(plan.WAL[0]), path.Base(plan.WAL[len(plan.WAL)-1]))
	}
}

func newBackupKeepCmd(a *app) *cobra.Command {
	var until string
	cmd := &cobra.Command{
		Use:   "keep ID",
		Short: "Keep a backup, and the WAL it needs, whatever retention says",
		Long: `keep marks a backup kept (backups/<id>/keep.json): retention (delete --retain-full,
--retain-days, the retention config keys, daemon retention jobs) never removes it,
nor the WAL from its start on, and delete --backup refuses it. With --until the
keep ends at that time. Marking a kept backup again replaces its keep.`,
		Example: "  pgkeep backup keep 20261122T180000Z-1a2b\n  pgkeep backup keep 20261122T180000Z-1a2b --until 2027-01-01T00:00:00Z",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.load(); err != nil {
				return err
			}
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
			if err := r.KeepBackup(ctx, args[0], u, time.Now()); err != nil {
				return err
			}
			if u != nil {
				fmt.Fprintf(cmd.OutOrStdout(), "backup %s is kept until %s\n", args[0], u.UTC().Format(time.RFC3339))
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "backup %s is kept until unkept\n", args[0])
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&until, "until", "", "end the keep at this time (RFC 3339 with a zone)")
	return cmd
}

func newBackupUnkeepCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "unkeep ID",
		Short:   "Let retention remove a kept backup again",
		Example: "  pgkeep backup unkeep 20261122T180000Z-1a2b",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.load(); err != nil {
				return err
			}
			if err := repo.ValidBackupID(args[0]); err != nil {
				return &configError{err.Error()}
			}
			ctx := cmd.Context()
			r, err := openRepo(ctx, a.cfg)
			if err != nil {
				return err
			}
			if err := r.UnkeepBackup(ctx, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "backup %s is no longer kept\n", args[0])
			return nil
		},
	}
}

// annotationText is a backup's annotations as k=v words, sorted.
func annotationText(a map[string]string) string {
	var parts []string
	for k, v := range a {
		parts = append(parts, k+"="+strconv.Quote(v))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

func newBackupListCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List the backups in the repository",
		Example: "  pgkeep backup list\n  pgkeep backup list --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.load(); err != nil {
				return err
			}
			ctx := cmd.Context()
			r, err := openRepo(ctx, a.cfg)
			if err != nil {
				return err
			}
			backups, debris, err := r.ListBackups(ctx)
			if err != nil {
				return err
			}
			keeps, err := r.KeptBackups(ctx)
			if err != nil {
				return err
			}
			now := time.Now()
			kept := func(id string) (bool, *time.Time) {
				k, ok := keeps[id]
				if !ok || !k.Active(now) {
					return false, nil
				}
				return true, k.Until
			}
			out := cmd.OutOrStdout()
			if asJSON {
				type row struct {
					repo.Summary
					Status    string     `json:"status"`
					Kept      bool       `json:"kept"`
					KeepUntil *time.Time `json:"keep_until,omitempty"`
				}
				rows := []row{}
				for _, b := range backups {
					k, until := kept(b.ID)
					rows = append(rows, row{b, "complete", k, until})
				}
				for _, id := range debris {
					rows = append(rows, row{Summary: repo.Summary{ID: id}, Status: "incomplete"})
				}
				return writeJSON(out, rows)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTART\tSTOP\tSTART LSN\tSTOP LSN\tTL\tDB SIZE\tSTORED\tSOURCE\tSTATUS\tANNOTATIONS")
			for _, b := range backups {
				status := "complete"
				if k, _ := kept(b.ID); k {
					status = "complete, kept"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s (%s)\t%s\t%s\n", b.ID,
					b.StartTime.Format(time.RFC3339), b.StopTime.Format(time.RFC3339), b.StartLSN, b.StopLSN,
					b.Timeline, humanBytes(b.DataSize), humanBytes(b.StoredSize), b.Host, b.Role, status, annotationText(b.Annotations))
			}
			for _, id := range debris {
				fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t-\t-\t-\tincomplete (running or failed)\n", id)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newBackupShowCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "show ID",
		Short:   "Show one backup",
		Example: "  pgkeep backup show 20261122T180000Z-1a2b",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.load(); err != nil {
				return err
			}
			ctx := cmd.Context()
			r, err := openRepo(ctx, a.cfg)
			if err != nil {
				return err
			}
			s, err := r.ReadSummary(ctx, args[0])
			if err != nil {
				return err
			}
			keeps, err := r.KeptBackups(ctx)
			if err != nil {
				return err
			}
			k, isKept := keeps[s.ID]
			isKept = isKept && k.Active(time.Now())
			out := cmd.OutOrStdout()
			if asJSON {
				v := struct {
					repo.Summary
					Status    string     `json:"status"`
					Kept      bool       `json:"kept"`
					KeepUntil *time.Time `json:"keep_until,omitempty"`
				}{Summary: s, Status: "complete", Kept: isKept}
				if isKept {
					v.KeepUntil = k.Until
				}
				return writeJSON(out, v)
			}
			defer func() {
				if isKept {
					until := "until unkept"
					if k.Until != nil {
						until = "until " + k.Until.UTC().Format(time.RFC3339)
					}
					fmt.Fprintf(out, "kept:              %s\n", until)
				}
				if len(s.Annotations) > 0 {
					fmt.Fprintf(out, "annotations:       %s\n", annotationText(s.Annotations))
				}
			}()
			fmt.Fprintf(out, "id:                %s\nstatus:            complete\nstart:             %s  LSN %s  (WAL %s)\nstop:              %s  LSN %s  (WAL %s)\ntimeline:          %d\nsource:            %s (%s)\npostgresql:        %d\nsystem identifier: %s\ndata checksums:    %v\nsize in database:  %s (%d files)\nsize in repository: %s\n",
				s.ID, s.StartTime.Format(time.RFC3339), s.StartLSN, s.StartWAL, s.StopTime.Format(time.RFC3339), s.StopLSN, s.StopWAL,
				s.Timeline, s.Host, s.Role, s.PGVersion, s.SystemIdentifier, s.DataChecksums, humanBytes(s.DataSize), s.Files, humanBytes(s.StoredSize))
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
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
	return cmd + " wal-fetch %f %p"
}

func newRestoreCmd(a *app) *cobra.Command {
	var (
		o           restore.BackupOptions
		spec        restore.TargetSpec
		target      string
		archiveMode string
		tblspace    []string
	)
	cmd := &cobra.Command{
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
			if err := a.load(); err != nil {
				return err
			}
			switch archiveMode {
			case "preserve":
			case "off":
				o.ArchiveModeOff = true
			default:
				return &configError{fmt.Sprintf("--archive-mode %q: use off or preserve", archiveMode)}
			}
			switch target {
			case "":
			case "immediate":
				spec.Immediate = true
			default:
				return &configError{fmt.Sprintf("--target %q: only immediate is supported (use --target-time, --target-lsn, --target-xid or --target-name)", target)}
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
			t, err := restore.ParseTarget(spec)
			if err != nil {
				return &configError{err.Error()}
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
			o.Logger = a.log
			o.Progress = newProgress("restore", a.log)
			res, err := restore.Backup(ctx, r, o)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "restored backup %s into %s: %d files written, %d kept, %d removed, %s downloaded\n",
				res.BackupID, o.PGData, res.FilesWritten, res.FilesKept, res.FilesRemoved, humanBytes(res.BytesDownloaded))
			if w := res.WAL; w.Segments > 0 {
				more := "every segment recovery needs"
				if !w.Complete {
					more = "recovery's wal-fetch fetches the rest"
				}
				fmt.Fprintf(cmd.OutOrStdout(), "downloaded %d WAL segments (%s) into pg_wal/pgkeep/prefetch: %s\n", w.Segments, humanBytes(w.Bytes), more)
			}
			if !o.ArchiveModeOff && !o.Standby {
				a.log.Info("archive_mode is kept from the backup: once promoted, the restored cluster archives like the original; restore a test copy with --archive-mode off")
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.PGData, "pgdata", "", "data directory to restore into (absolute path)")
	f.StringVar(&o.BackupID, "backup", "", "backup ID or latest (default: newest backup before the target)")
	f.StringVar(&spec.Time, "target-time", "", "recover to this time (RFC 3339 or PostgreSQL timestamptz, with zone)")
	f.StringVar(&spec.LSN, "target-lsn", "", "recover to this WAL location")
	f.StringVar(&spec.XID, "target-xid", "", "recover to this transaction ID")
	f.StringVar(&spec.Name, "target-name", "", "recover to this named restore point (pg_create_restore_point)")
	f.StringVar(&target, "target", "", "immediate: stop as soon as the backup is consistent")
	f.StringVar(&spec.Action, "target-action", "", "at the target: promote, pause or shutdown (PostgreSQL's default: pause)")
	f.StringVar(&spec.Timeline, "target-timeline", "", "latest (default), current or a timeline number")
	f.BoolVar(&spec.Exclusive, "target-exclusive", false, "stop just before the target instead of just after it")
	f.BoolVar(&o.Standby, "standby", false, "write standby.signal: start as a standby")
	f.StringVar(&archiveMode, "archive-mode", "preserve", "preserve: keep the backup's archive_mode (a restore that replaces the cluster); off: write archive_mode = off (a test copy that must never archive into this repository)")
	f.BoolVar(&o.Delta, "delta", false, "reuse files that match the backup; rewrite the rest, delete extras")
	f.BoolVar(&o.Force, "force", false, "empty a non-empty data directory first")
	f.StringArrayVar(&tblspace, "tablespace-map", nil, "OID=DIR: restore a tablespace somewhere else (repeatable)")
	cmd.MarkFlagRequired("pgdata")
	return cmd
}

func newDeleteCmd(a *app) *cobra.Command {
	var (
		o        repo.RetentionOptions
		dryRun   bool
		backupID string
	)
	cmd := &cobra.Command{
		Use:   "delete",
		Short: "Apply retention, or delete one backup: remove old backups, the WAL no kept backup needs, and debris",
		Long: `delete keeps the newest --retain-full backups (or those of the last --retain-days
days, plus the newest one older, so every moment of the window stays restorable),
and the backups marked kept (backup keep), removes the others and the WAL older than
the oldest kept backup's start, and removes debris of failed backups (uncommitted
objects older than --debris-min-age).

delete --backup ID removes that one backup (not a kept one) and the WAL older than
the oldest remaining backup's start.

Every remaining backup stays restorable to any point up to the newest archived WAL.
It prints a line per backup and the totals (backups, WAL files, bytes); --dry-run
prints the same with "would delete". It is safe to run while wal-push and backup run.`,
		Example: "  pgkeep delete --retain-full 7 --dry-run\n  pgkeep delete --retain-days 14\n  pgkeep delete --backup 20261122T180000Z-1a2b",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.load(); err != nil {
				return err
			}
			if backupID != "" {
				if o.RetainFull != 0 || o.RetainDays != 0 {
					return &configError{"give either --backup ID or a retention (--retain-full, --retain-days), not both"}
				}
				if err := repo.ValidBackupID(backupID); err != nil {
					return &configError{"--backup: " + err.Error()}
				}
			} else if o.RetainFull < 0 || o.RetainDays < 0 || (o.RetainFull > 0) == (o.RetainDays > 0) {
				return &configError{"give exactly one of --retain-full N or --retain-days D (N, D >= 1), or --backup ID"}
			}
			ctx := cmd.Context()
			r, err := openRepo(ctx, a.cfg)
			if err != nil {
				return err
			}
			o.Now = time.Now()
			var plan repo.RetentionPlan
			if backupID != "" {
				plan, err = r.PlanDeleteBackup(ctx, backupID, o.Now)
			} else {
				plan, err = r.PlanRetention(ctx, o)
			}
			if err != nil {
				return err
			}
			verb := "deleted"
			if dryRun {
				verb = "would delete"
			}
			printPlan(cmd.OutOrStdout(), plan, verb, "")
			if dryRun {
				return nil
			}
			return r.ApplyRetention(ctx, plan)
		},
	}
	cmd.Flags().IntVar(&o.RetainFull, "retain-full", 0, "keep the newest N backups")
	cmd.Flags().IntVar(&o.RetainDays, "retain-days", 0, "keep the backups of the last D days")
	cmd.Flags().StringVar(&backupID, "backup", "", "delete this one backup (and the WAL no remaining backup needs)")
	cmd.Flags().DurationVar(&o.DebrisMinAge, "debris-min-age", time.Hour, "remove uncommitted backups only when nothing was written to them for this long")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be deleted, delete nothing")
	return cmd
}

func newVerifyCmd(a *app) *cobra.Command {
	var asJSON, noCache bool
	cmd := &cobra.Command{
		Use:   "verify [ID]",
		Short: "Re-read backups and archived WAL, and check the continuity of the WAL archive",
		Long: `verify re-reads every object of the backup (or of all backups) and every archived
WAL object, checks sizes and checksums (decrypting with the configured identity),
checks that each WAL segment's page header belongs to the repository's database
system and to its file name, that each backup's summary and manifest belong to it,
and that the WAL from each backup's start to the newest archived segment is
continuous, following timeline switches. It prints each problem on one line, naming
the backup or object, and exits 1 if there is any. It changes nothing.

WAL objects read in full and found good are remembered in verify.cache_dir, so the
next verify reads only new or changed ones; --no-cache reads everything again.`,
		Example: "  pgkeep verify\n  pgkeep verify 20261122T180000Z-1a2b\n  pgkeep verify --no-cache",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.load(); err != nil {
				return err
			}
			ctx := cmd.Context()
			r, err := openRepo(ctx, a.cfg)
			if err != nil {
				return err
			}
			o := repo.VerifyOptions{Concurrency: a.cfg.DownloadConcurrency, Logger: a.log}
			if len(args) == 1 {
				if err := repo.ValidBackupID(args[0]); err != nil {
					return err
				}
				if _, err := r.ReadSummary(ctx, args[0]); errors.Is(err, repo.ErrBackupNotFound) {
					return err
				}
				o.BackupIDs = args
			} else {
				ids, err := r.BackupIDs(ctx)
				if err != nil {
					return fmt.Errorf("verify: %w", err)
				}
				if len(ids) == 0 {
					return errors.New("verify: the repository holds no backup")
				}
				o.BackupIDs = ids
			}
			if !noCache {
				o.Cache = openVerifyCache(a.cfg, a.log, r)
			}
			rep, err := r.Verify(ctx, o)
			if err != nil {
				return fmt.Errorf("verify: %w", err)
			}
			probs := rep.Problems
			out := cmd.OutOrStdout()
			if asJSON {
				if probs == nil {
					probs = []repo.Problem{}
				}
				writeJSON(out, probs)
			} else {
				for _, p := range probs {
					fmt.Fprintln(out, p.String())
				}
				w := rep.WAL
				fmt.Fprintf(out, "WAL: %d object(s) checked, %d read, %d from cache, %d bad\n", w.Objects, w.Read, w.Cached, w.Bad)
			}
			if len(probs) > 0 {
				return fmt.Errorf("verify: %d problem(s) found", len(probs))
			}
			if !asJSON {
				fmt.Fprintf(out, "verified %d backup(s) and %d WAL object(s): all data readable, WAL continuous\n", len(rep.Backups), rep.WAL.Objects)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print problems as JSON")
	cmd.Flags().BoolVar(&noCache, "no-cache", false, "read every WAL object, also those an earlier verify found good")
	return cmd
}

// openVerifyCache opens verify's WAL cache for r in verify.cache_dir (or
// the user's cache directory). Without one verify still works, reading
// every WAL object.
func openVerifyCache(cfg Config, log *slog.Logger, r *repo.Repository) *repo.VerifyCache {
	dir := cfg.Verify.CacheDir
	if dir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			log.Warn("no verify cache: every WAL object is read", "err", err)
			return nil
		}
		dir = filepath.Join(base, "pgkeep")
	}
	c, err := repo.OpenVerifyCache(dir, r)
	if err != nil {
		log.Warn("no verify cache: every WAL object is read", "err", err)
		return nil
	}
	return c
}

package main

import (
	"time"

	"github.com/spf13/cobra"

	"github.com/pgkeep/pgkeep/maintain"
	"github.com/pgkeep/pgkeep/repo"
)

func newDeleteCmd(a *app) *cobra.Command {
	var (
		o        repo.RetentionOptions
		dryRun   bool
		backupID string
		repack   string
		grace    time.Duration
	)
	cmd := withConfig(&cobra.Command{
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
prints the same with "would delete". It is safe to run while wal-push and backup run.

Afterwards it repacks packs of deleted backups that kept backups still name
but that are mostly dead: their live blocks are copied into new packs, at most
--max-repack-bytes per run (config retention.max_repack_bytes, default 1GB;
0 turns it off), and the old packs are removed by a later run once
--repack-grace has passed (in-flight restores may still read them). Repacking
reads the manifests, so it needs the repository key.`,
		Example: "  pgkeep delete --retain-full 7 --dry-run\n  pgkeep delete --retain-days 14\n  pgkeep delete --backup 20261122T180000Z-1a2b",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
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
			maxRepack := a.cfg.Retention.MaxRepackBytesValue()
			if cmd.Flags().Changed("max-repack-bytes") {
				n, err := parseBytes(repack)
				if err != nil {
					return &configError{"--max-repack-bytes: " + err.Error()}
				}
				maxRepack = int64(n)
			}
			if grace < 0 {
				return &configError{"--repack-grace must not be negative"}
			}
			return maintain.Delete(ctx, r, maintain.DeleteOptions{Retention: o, BackupID: backupID, DryRun: dryRun,
				MaxRepackBytes: maxRepack, RepackGrace: grace, Out: cmd.OutOrStdout(), Err: cmd.ErrOrStderr()})
		},
	})
	cmd.Flags().IntVar(&o.RetainFull, "retain-full", 0, "keep the newest N backups")
	cmd.Flags().IntVar(&o.RetainDays, "retain-days", 0, "keep the backups of the last D days")
	cmd.Flags().StringVar(&backupID, "backup", "", "delete this one backup (and the WAL no remaining backup needs)")
	cmd.Flags().DurationVar(&o.DebrisMinAge, "debris-min-age", time.Hour, "remove uncommitted backups only when nothing was written to them for this long")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be deleted, delete nothing")
	cmd.Flags().StringVar(&repack, "max-repack-bytes", "", "copy at most this many live bytes out of mostly dead packs (e.g. 1GB; 0: no repack; default retention.max_repack_bytes or 1GB)")
	cmd.Flags().DurationVar(&grace, "repack-grace", repo.DefaultRepackGrace, "keep a repacked pack this long for restores that read it")
	return cmd
}

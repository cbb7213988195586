package main

import (
	"github.com/spf13/cobra"

	"github.com/pgkeep/pgkeep/maintain"
)

func newVerifyCmd(a *app) *cobra.Command {
	var asJSON, noCache bool
	cmd := withConfig(&cobra.Command{
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
			ctx := cmd.Context()
			r, err := openRepo(ctx, a.cfg)
			if err != nil {
				return err
			}
			o := maintain.VerifyOptions{
				CacheDir:    a.cfg.Verify.CacheDir,
				NoCache:     noCache,
				Concurrency: a.cfg.DownloadConcurrency,
				JSON:        asJSON,
				Out:         cmd.OutOrStdout(),
				Logger:      a.log,
			}
			if len(args) == 1 {
				o.BackupID = args[0]
			}
			return maintain.Verify(ctx, r, o)
		},
	})
	cmd.Flags().BoolVar(&asJSON, "json", false, "print problems as JSON")
	cmd.Flags().BoolVar(&noCache, "no-cache", false, "read every WAL object, also those an earlier verify found good")
	return cmd
}

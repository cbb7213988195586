package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgkeep/pgkeep/archive"
)

func newCheckCmd(a *app) *cobra.Command {
	var timeout time.Duration
	cmd := withConfig(&cobra.Command{
		Use:   "check",
		Short: "Prove that WAL archiving into the repository works, end to end",
		Long: `check connects to the local PostgreSQL (postgres.dsn or the libpq PG* variables),
makes sure it is the cluster the repository belongs to and that archive_mode is on,
then, on a primary, writes a restore point, switches to a new WAL segment and waits
until that segment is in the repository: the path every backup and restore depends
on. A failing archive_command is reported with PostgreSQL's own archiver statistics.
On a standby (archive_mode = on) only the settings and the repository are checked:
its primary archives. Run it after setting up archiving and after changing it.`,
		Example: `  pgkeep check
  pgkeep check --timeout 2m`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if timeout <= 0 {
				return &configError{fmt.Sprintf("--timeout %s: must be positive", timeout)}
			}
			ctx := cmd.Context()
			r, err := openRepo(ctx, a.cfg)
			if err != nil {
				return err
			}
			res, err := archive.Check(ctx, r, archive.CheckOptions{DSN: a.cfg.Postgres.DSN, Timeout: timeout, Logger: a.log})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if res.Standby {
				fmt.Fprintf(out, "ok: standby of the repository's cluster; its primary archives (run pgkeep check there)\n")
				return nil
			}
			fmt.Fprintf(out, "ok: WAL segment %s archived in %.1fs\n", res.Segment, res.Elapsed.Seconds())
			return nil
		},
	})
	cmd.Flags().DurationVar(&timeout, "timeout", time.Minute, "how long to wait for the switched segment to be archived")
	return cmd
}

package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pgkeep/pgkeep/inspect"
)

func newInfoCmd(a *app) *cobra.Command {
	var (
		asJSON bool
		output string
	)
	cmd := withConfig(&cobra.Command{
		Use:   "info",
		Short: "Show the repository: archived WAL, the recovery window, backups, a running backup",
		Long: `info shows the repository at a glance: per timeline the archived WAL range and any
gaps; the recovery window (the first point a restore can reach, the oldest backup's
consistency point, and the last, the end of the newest WAL archived without a gap
after the newest backup, on the timeline recovery follows by default); every backup
with its type, times, LSNs, sizes, annotations and keep flag; the repository's size;
and a backup running now with its progress.

It reads one listing of wal/ and of backups/ plus the backups' summaries and the
timeline history files, never the WAL itself, so it is fast on a big repository, and
needs no key.`,
		Example: "  pgkeep info\n  pgkeep info --json | jq .recovery_window\n  pgkeep info -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch output {
			case "", "table":
			case "json":
				asJSON = true
			default:
				return &configError{fmt.Sprintf("--output %q: use json or table", output)}
			}
			ctx := cmd.Context()
			r, err := openRepo(ctx, a.cfg)
			if err != nil {
				return err
			}
			return inspect.Info(ctx, r, asJSON, cmd.OutOrStdout())
		},
	})
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVarP(&output, "output", "o", "", "json or table (the default)")
	return cmd
}

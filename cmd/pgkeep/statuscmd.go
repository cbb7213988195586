package main

import (
	"github.com/spf13/cobra"

	"github.com/pgkeep/pgkeep/status"
)

func newStatusCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := withConfig(&cobra.Command{
		Use:   "status",
		Short: "Show the Patroni cluster (from etcd) and this node's WAL archiving",
		Long: `status prints the Patroni cluster as etcd holds it: the leader and every member
with its role, state, timeline, replication lag in bytes behind the leader and
tags. It needs etcd.endpoints and patroni.scope; without them only the local
part is shown.

The local part is PostgreSQL's archiver (pg_stat_archiver): the last archived
WAL file and when, and failures. pgkeep connects with postgres.dsn, or the
libpq PG* environment variables when that is empty.

Exit status: 0 when everything configured could be read; 1 when etcd could
not be read, or when etcd is not configured and PostgreSQL is unreachable;
2 for configuration errors.`,
		Example: `  pgkeep status
  pgkeep status --json | jq -r .patroni.leader`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o := status.Options{
				Standalone: a.cfg.Daemon.HA == "none",
				LockDir:    a.cfg.Daemon.LockDir,
				DSN:        a.cfg.Postgres.DSN,
				JSON:       asJSON,
				Out:        cmd.OutOrStdout(),
			}
			if !o.Standalone && len(a.cfg.Etcd.Endpoints) > 0 {
				h, err := haOptions(a.cfg, a.log)
				if err != nil {
					return err
				}
				o.HA = &h
			}
			return status.Show(cmd.Context(), o)
		},
	})
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of text")
	return cmd
}

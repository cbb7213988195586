package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/pgkeep/pgkeep/restore"
)

func newRecoveryCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "recovery",
		Short: "Follow a restored cluster's recovery",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newRecoveryStatusCmd(a))
	return cmd
}

func newRecoveryStatusCmd(a *app) *cobra.Command {
	var (
		pgdata   string
		interval time.Duration
		timeout  time.Duration
		once     bool
	)
	cmd := withConfig(&cobra.Command{
		Use:   "status",
		Short: "Show replay progress until recovery ends: LSN, local WAL segments left, rate, ETA",
		Long: `status follows the recovery of the cluster in --pgdata (started after pgkeep restore):
the replayed LSN, the WAL segments downloaded into pg_wal/pgkeep/prefetch that are
still to be replayed, the replay rate and, when the end of the downloaded WAL is
known, an ETA to it. On a terminal it redraws one line every second; otherwise it
logs one line every --interval. It returns when recovery has ended (the cluster was
promoted) and exits 1 if --timeout passes first. PostgreSQL accepts the connection
(postgres.dsn or the libpq PG* variables) once it is consistent; before that only
the local segments are shown.`,
		Example: `  pgkeep restore --pgdata /var/lib/postgresql/15/main && pg_ctlcluster 15 main start
  pgkeep recovery status --pgdata /var/lib/postgresql/15/main`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pgdata == "" {
				pgdata = a.cfg.PGData
			}
			if pgdata == "" || !filepath.IsAbs(pgdata) {
				return &configError{fmt.Sprintf("--pgdata %q: give the restored data directory as an absolute path (or set pgdata in the config)", pgdata)}
			}
			if interval <= 0 || interval > time.Hour || timeout <= 0 {
				return &configError{"--interval must be within 0s..1h and --timeout positive"}
			}
			tty := term.IsTerminal(int(os.Stderr.Fd()))
			every := interval
			if tty && !cmd.Flags().Changed("interval") {
				every = time.Second
			}
			return restore.FollowRecovery(cmd.Context(), restore.FollowOptions{
				PGData: pgdata, DSN: a.cfg.Postgres.DSN,
				Every: every, Timeout: timeout, TTY: tty, Once: once,
				Out: cmd.OutOrStdout(), Status: os.Stderr, Logger: a.log,
			})
		},
	})
	cmd.Flags().StringVar(&pgdata, "pgdata", "", "the recovering data directory (default: config pgdata)")
	cmd.Flags().DurationVar(&interval, "interval", 5*time.Second, "time between lines when not on a terminal")
	cmd.Flags().DurationVar(&timeout, "timeout", 24*time.Hour, "give up after this long")
	cmd.Flags().BoolVar(&once, "once", false, "print one line and return")
	return cmd
}

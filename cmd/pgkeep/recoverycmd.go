package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/pgkeep/pgkeep/pg"
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

// recoverySample is one look at a recovering cluster.
type recoverySample struct {
	at         time.Time
	running    bool   // a postmaster runs in the data directory
	connected  bool   // it accepted a connection (consistent, hot_standby)
	inRecovery bool   // pg_is_in_recovery()
	pause      string // pg_get_wal_replay_pause_state()
	lsn        pg.LSN // pg_last_wal_replay_lsn()
	segSize    int64
	local      restore.LocalWAL
	connErr    string
}

func newRecoveryStatusCmd(a *app) *cobra.Command {
	var (
		pgdata   string
		interval time.Duration
		timeout  time.Duration
		once     bool
	)
	cmd := &cobra.Command{
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
			if err := a.load(); err != nil {
				return err
			}
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
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			return followRecovery(ctx, a, pgdata, every, tty, once, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&pgdata, "pgdata", "", "the recovering data directory (default: config pgdata)")
	cmd.Flags().DurationVar(&interval, "interval", 5*time.Second, "time between lines when not on a terminal")
	cmd.Flags().DurationVar(&timeout, "timeout", 24*time.Hour, "give up after this long")
	cmd.Flags().BoolVar(&once, "once", false, "print one line and return")
	return cmd
}

func followRecovery(ctx context.Context, a *app, pgdata string, every time.Duration, tty, once bool, out io.Writer) error {
	prefetch := filepath.Join(pgdata, "pg_wal", "pgkeep", "prefetch")
	rate := restore.ReplayRate{Window: 10 * time.Second}
	var lastLSN pg.LSN
	for {
		s := sampleRecovery(ctx, a.cfg.Postgres.DSN, pgdata, prefetch)
		if s.connected {
			rate.Add(s.at, s.lsn)
			lastLSN = s.lsn
		}
		line, fields := describeRecovery(s, rate.BytesPerSecond())
		done := s.connected && !s.inRecovery
		switch {
		case tty:
			fmt.Fprintf(os.Stderr, "\r\033[K%s", line)
			if done || once {
				fmt.Fprintln(os.Stderr)
			}
		default:
			a.log.Info("recovery", fields...)
		}
		if done {
			fmt.Fprintf(out, "recovery finished: promoted after replaying up to %s\n", lastLSN)
			return nil
		}
		if once {
			return nil
		}
		select {
		case <-ctx.Done():
			if tty {
				fmt.Fprintln(os.Stderr)
			}
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return errors.New("recovery status: --timeout passed while recovery was still running")
			}
			return ctx.Err()
		case <-time.After(every):
		}
	}
}

func sampleRecovery(ctx context.Context, dsn, pgdata, prefetch string) recoverySample {
	s := recoverySample{at: time.Now(), running: pg.PostmasterPID(pgdata) > 0, segSize: pg.DefaultSegmentSize}
	s.local = restore.ReadLocalWAL(prefetch)
	if !s.running {
		return s
	}
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, dsn)
	if err != nil {
		s.connErr = oneLine(err)
		return s
	}
	defer conn.Close(context.Background())
	var lsn string
	err = conn.QueryRow(cctx, `SELECT pg_is_in_recovery(),
		coalesce(pg_last_wal_replay_lsn()::text, ''),
		CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE '' END,
		(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')`).Scan(&s.inRecovery, &lsn, &s.pause, &s.segSize)
	if err != nil {
		s.connErr = oneLine(err)
		return s
	}
	s.connected = true
	if l, err := pg.ParseLSN(lsn); err == nil {
		s.lsn = l
	}
	if !pg.ValidSegmentSize(s.segSize) {
		s.segSize = pg.DefaultSegmentSize
	}
	return s
}

// describeRecovery is the terminal line and the log fields for s.
func describeRecovery(s recoverySample, bps float64) (string, []any) {
	var parts []string
	var fields []any
	state := "replaying"
	switch {
	case !s.running:
		state = "PostgreSQL is not running"
	case !s.connected:
		state = "starting (not consistent yet, or not accepting connections)"
	case !s.inRecovery:
		state = "promoted"
	case s.pause != "" && s.pause != "not paused":
		state = "replay " + s.pause
	}
	parts = append(parts, state)
	fields = append(fields, "state", state)
	if s.connected {
		parts = append(parts, "LSN "+s.lsn.String())
		fields = append(fields, "lsn", s.lsn.String())
	}
	parts = append(parts, fmt.Sprintf("%d local segments left", s.local.Segments))
	fields = append(fields, "local_segments_left", s.local.Segments)
	if s.connected && bps > 0 {
		parts = append(parts, fmt.Sprintf("%s/s", humanBytes(int64(bps))))
		fields = append(fields, "mb_per_s", fmt.Sprintf("%.1f", bps/1e6))
		if s.local.OK && s.inRecovery {
			end := restore.SegmentEnd(s.local.Last, s.segSize)
			if eta := restore.ETA(s.lsn, end, bps); eta > 0 {
				parts = append(parts, "ETA "+eta.Round(time.Second).String()+" to the end of the downloaded WAL ("+s.local.Last.Name+")")
				fields = append(fields, "eta", eta.Round(time.Second).String(), "downloaded_to", s.local.Last.Name)
			}
		}
	}
	if s.connErr != "" && s.running && !s.connected {
		fields = append(fields, "connection", s.connErr)
	}
	return strings.Join(parts, ", "), fields
}

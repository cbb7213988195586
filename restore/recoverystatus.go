package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgkeep/pgkeep/internal/human"
	"github.com/pgkeep/pgkeep/pg"
)

// recoverySample is one look at a recovering cluster.
type recoverySample struct {
	at         time.Time
	running    bool   // a postmaster runs in the data directory
	connected  bool   // it accepted a connection (consistent, hot_standby)
	inRecovery bool   // pg_is_in_recovery()
	pause      string // pg_get_wal_replay_pause_state()
	lsn        pg.LSN // pg_last_wal_replay_lsn()
	segSize    int64
	local      LocalWAL
	connErr    string
}

// FollowOptions is `pgkeep recovery status`.
type FollowOptions struct {
	PGData string // the recovering data directory
	DSN    string // to connect once it is consistent ("": the PG* variables)
	// Every is the time between looks; Timeout ends the watch with an
	// error.
	Every, Timeout time.Duration
	// TTY redraws one line on Status instead of logging a line each time.
	TTY  bool
	Once bool // one look, then return
	// Out gets the final line, Status (stderr) the redrawn one.
	Out, Status io.Writer
	Logger      *slog.Logger
}

// FollowRecovery shows the recovery of o.PGData until it ends (the cluster
// was promoted), o.Once, or o.Timeout (an error).
func FollowRecovery(ctx context.Context, o FollowOptions) error {
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	pgdata, every, tty, once, out := o.PGData, o.Every, o.TTY, o.Once, o.Out
	prefetch := filepath.Join(pgdata, "pg_wal", "pgkeep", "prefetch")
	rate := ReplayRate{Window: 10 * time.Second}
	var lastLSN pg.LSN
	for {
		s := sampleRecovery(ctx, o.DSN, pgdata, prefetch)
		if s.connected {
			rate.Add(s.at, s.lsn)
			lastLSN = s.lsn
		}
		line, fields := describeRecovery(s, rate.BytesPerSecond())
		done := s.connected && !s.inRecovery
		switch {
		case tty:
			fmt.Fprintf(o.Status, "\r\033[K%s", line)
			if done || once {
				fmt.Fprintln(o.Status)
			}
		default:
			o.Logger.Info("recovery", fields...)
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
				fmt.Fprintln(o.Status)
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
	s.local = ReadLocalWAL(prefetch)
	if !s.running {
		return s
	}
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, dsn)
	if err != nil {
		s.connErr = human.OneLine(err)
		return s
	}
	defer conn.Close(context.Background())
	rs, err := pg.QueryReplayStatus(cctx, conn)
	if err != nil {
		s.connErr = human.OneLine(err)
		return s
	}
	s.connected = true
	s.inRecovery, s.pause, s.segSize = rs.InRecovery, rs.PauseState, rs.SegmentSize
	if l, err := pg.ParseLSN(rs.LSN); err == nil {
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
		parts = append(parts, fmt.Sprintf("%s/s", human.Bytes(int64(bps))))
		fields = append(fields, "mb_per_s", fmt.Sprintf("%.1f", bps/1e6))
		if s.local.OK && s.inRecovery {
			end := SegmentEnd(s.local.Last, s.segSize)
			if eta := ETA(s.lsn, end, bps); eta > 0 {
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

package archive

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
)

// CheckOptions configure Check.
type CheckOptions struct {
	DSN     string
	Timeout time.Duration // for the switched segment to arrive (default 1 min)
	Logger  *slog.Logger
}

// CheckResult is what Check found.
type CheckResult struct {
	Standby bool   // on a standby only the settings and the repository are checked
	Segment string // the segment switched and found archived (primary)
	Elapsed time.Duration
}

// Check proves that WAL archiving into r works end to end, the way a
// backup depends on it: the server belongs to the repository, archive_mode
// is on, and on a primary a freshly switched segment reaches the
// repository within the timeout (through whatever archive_command is set).
func Check(ctx context.Context, r *repo.Repository, o CheckOptions) (CheckResult, error) {
	var res CheckResult
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Minute
	}
	conn, si, err := connectServer(ctx, o.DSN, r)
	if err != nil {
		return res, fmt.Errorf("check: %w", err)
	}
	defer conn.Close(context.Background())
	mode, command, err := pg.ArchiveSettings(ctx, conn)
	if err != nil {
		return res, fmt.Errorf("check: read archive settings: %w", err)
	}
	if mode == "off" {
		return res, fmt.Errorf("check: archive_mode is off: set archive_mode = on and archive_command = 'pgkeep wal-push %%p', then restart PostgreSQL")
	}
	// A standby archives only with archive_mode = always; either way its
	// primary's archiving is what makes the WAL, and it cannot switch WAL.
	if (!si.Standby || mode == "always") && !strings.Contains(command, "wal-push") {
		// Not the command itself: it may carry credentials.
		log.Warn("archive_command does not call pgkeep wal-push; checking that it still fills the repository")
	}
	res.Standby = si.Standby
	if si.Standby {
		return res, nil
	}
	// A restore point makes sure the segment holds WAL, so the switch
	// happens even on an idle server; pg_walfile_name names the segment the
	// switch completed, on the current timeline.
	seg, err := pg.SwitchWALWithRestorePoint(ctx, conn, "pgkeep check")
	if err != nil {
		return res, fmt.Errorf("check: switch WAL: %w", err)
	}
	start := time.Now()
	probe := func() (pg.ArchiverState, error) { return pg.QueryArchiver(ctx, conn) }
	if err := waitForWAL(ctx, r, seg, seg, si.SegmentSize, o.Timeout, probe, log); err != nil {
		return res, fmt.Errorf("check: %w", err)
	}
	res.Segment, res.Elapsed = seg, time.Since(start)
	return res, nil
}

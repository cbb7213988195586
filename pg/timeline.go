package pg

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// ServerTimeline asks the server at dsn which timeline it writes (a
// primary) or replays (a standby): the timeline a new replica of it must
// follow. It gives up after timeout.
func ServerTimeline(ctx context.Context, dsn string, timeout time.Duration) (uint32, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	// pg_walfile_name names the primary's current timeline; a standby's
	// replay timeline is in pg_last_wal_replay_lsn's record, which
	// pg_control_checkpoint lags, so ask the walreceiver or the checkpoint.
	var name string
	err = conn.QueryRow(ctx, `SELECT CASE WHEN pg_is_in_recovery()
		THEN coalesce((SELECT lpad(to_hex(received_tli), 8, '0') FROM pg_stat_wal_receiver),
		              lpad(to_hex((SELECT timeline_id FROM pg_control_checkpoint())), 8, '0'))
		ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END`).Scan(&name)
	if err != nil {
		return 0, fmt.Errorf("query timeline: %w", err)
	}
	tli, err := strconv.ParseUint(name, 16, 32)
	if err != nil || tli == 0 {
		return 0, fmt.Errorf("server reported timeline %q", name)
	}
	return uint32(tli), nil
}

package archive

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
)

// waitForWAL waits until every segment from first to last is archived,
// giving up early if the server that should archive them is gone (probe
// fails). When the server's own archiver reports failures meanwhile, it
// says so at once in the log and in the timeout error: a backup waiting on
// a broken archive_command is the usual cause, and the server log has the
// command's own error.
func waitForWAL(ctx context.Context, r *repo.Repository, first, last string, segSize int64, timeout time.Duration,
	probe func() (pg.ArchiverState, error), log *slog.Logger) error {
	f, _ := pg.ParseWALFileName(first)
	l, _ := pg.ParseWALFileName(last)
	deadline := time.Now().Add(timeout)
	// The last segment is usually archived within a wal-push or two of
	// pg_backup_stop: poll soon, then back off to 200 ms, so a backup does
	// not idle most of a fixed interval on every wait.
	wait := 10 * time.Millisecond
	var st pg.ArchiverState
	warned := false
	for seg := f; seg.SegNo(segSize) <= l.SegNo(segSize); {
		ok, err := r.HasWAL(ctx, seg)
		if err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			return fmt.Errorf("check archived WAL %s: %w", seg.Name, err)
		}
		if ok {
			seg = seg.NextSegment(segSize)
			continue
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("WAL segment %s needed by the backup was not archived within %s", seg.Name, timeout)
			if st.Failing {
				return fmt.Errorf("%s: PostgreSQL's archiver is failing (%d failures so far, the last on %s at %s; the server log has archive_command's error)",
					msg, st.FailedRuns, st.FailedWAL, st.FailedAt.UTC().Format(time.RFC3339))
			}
			return fmt.Errorf("%s (is archive_command = 'pgkeep wal-push %%p' working?)", msg)
		}
		if st, err = probe(); err != nil {
			if ctx.Err() != nil {
				// The probe failed because the backup was cancelled
				// (a signal): say that, not that PostgreSQL went away.
				return context.Cause(ctx)
			}
			return fmt.Errorf("PostgreSQL went away before WAL segment %s needed by the backup was archived: %w", seg.Name, err)
		}
		if st.Failing && !warned {
			warned = true
			log.Warn("PostgreSQL's archiver is failing; still waiting for the backup's WAL (the server log has archive_command's error)",
				"waiting_for", seg.Name, "last_failed_wal", st.FailedWAL, "last_failed_time", st.FailedAt.UTC())
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx) // "terminated signal received", not "context canceled"
		case <-time.After(wait):
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
	return nil
}

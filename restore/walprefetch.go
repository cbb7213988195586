package restore

import (
	"context"
	"log/slog"
	"path/filepath"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
)

// bulkDownload is a running bulk WAL download (or none).
type bulkDownload struct {
	stop func()
	done chan bulkOutcome
}

type bulkOutcome struct {
	res BulkWALResult
	err error
}

// wait returns the download's outcome once it has ended (call it once).
func (b bulkDownload) wait() (BulkWALResult, error) {
	out := <-b.done
	return out.res, out.err
}

// startBulkWAL starts downloading the WAL recovery will read first, when
// the budget holds at least a segment and recovery is configured here.
func startBulkWAL(ctx context.Context, r *repo.Repository, m *repo.Manifest, o BackupOptions, tli uint32, history []pg.TimelineSwitch, log *slog.Logger) bulkDownload {
	bulkCtx, stop := context.WithCancel(ctx)
	b := bulkDownload{stop: stop, done: make(chan bulkOutcome, 1)}
	if o.WALPrefetchBytes >= m.SegmentSize && pg.ValidSegmentSize(m.SegmentSize) && !o.NoRecoveryConfig {
		go func() {
			wal, err := bulkWAL(bulkCtx, r, m, o, tli, history, log)
			b.done <- bulkOutcome{wal, err}
		}()
	} else {
		b.done <- bulkOutcome{}
	}
	return b
}

// bulkWAL plans and runs the restore's WAL download into the prefetch
// directory PostgreSQL's wal-fetch will look in. Only the segments the
// budget allows are planned, so the directory never holds more.
func bulkWAL(ctx context.Context, r *repo.Repository, m *repo.Manifest, o BackupOptions, tli uint32, history []pg.TimelineSwitch, log *slog.Logger) (BulkWALResult, error) {
	var stop pg.LSN
	switch o.Target.Kind {
	case TargetImmediate:
		stop, _ = pg.ParseLSN(m.StopLSN)
	case TargetLSN:
		stop = o.Target.LSN
	}
	plan, err := PlanBulkWAL(ctx, r, m, tli, history, stop, int(o.WALPrefetchBytes/m.SegmentSize))
	if err != nil {
		if ctx.Err() != nil {
			return BulkWALResult{}, err
		}
		// Recovery fetches it all itself then: slower, not wrong.
		log.Warn("could not plan the bulk WAL download; recovery fetches WAL as it goes", "err", err)
		return BulkWALResult{}, nil
	}
	dir := DefaultPrefetchDir(filepath.Join(o.PGData, "pg_wal", RecoveryFileName))
	return BulkWAL(ctx, r, plan, BulkWALOptions{Dir: dir, Concurrency: o.WALWorkers, Logger: log})
}

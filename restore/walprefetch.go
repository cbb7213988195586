package restore

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
)

// bulkDownload is a running bulk WAL download (or none).
type bulkDownload struct {
	stop func()
	done chan bulkOutcome
	// abort, for a download handed to a background process, ends that
	// process (the restore failed after all); nil otherwise.
	abort func()
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
	if o.WALPrefetchBytes >= m.SegmentSize && pg.ValidSegmentSize(m.SegmentSize) && !o.NoRecoveryConfig && o.WALProcess != nil {
		var mu sync.Mutex
		var child *exec.Cmd
		b.abort = func() {
			stop()
			mu.Lock()
			defer mu.Unlock()
			if child != nil {
				child.Process.Kill()
			}
		}
		go func() {
			wal, cmd, err := bulkWALBackground(bulkCtx, r, m, o, tli, history, log)
			mu.Lock()
			child = cmd
			mu.Unlock()
			b.done <- bulkOutcome{wal, err}
		}()
	} else if o.WALPrefetchBytes >= m.SegmentSize && pg.ValidSegmentSize(m.SegmentSize) && !o.NoRecoveryConfig {
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
	plan, ok, err := planBulk(ctx, r, m, o, tli, history, false, log)
	if !ok {
		return BulkWALResult{}, err
	}
	dir := DefaultPrefetchDir(filepath.Join(o.PGData, "pg_wal", RecoveryFileName))
	return BulkWAL(ctx, r, plan, BulkWALOptions{Dir: dir, Concurrency: o.WALWorkers, Logger: log})
}

// planBulk plans the bulk download within the budget; ok is false when
// there is nothing to download (err set only when ctx was cancelled).
// With follow the plan runs to the end of what recovery needs and the
// budget is its window (BulkWALPlan.Window): a background download that
// recovery consumes as it goes.
func planBulk(ctx context.Context, r *repo.Repository, m *repo.Manifest, o BackupOptions, tli uint32, history []pg.TimelineSwitch, follow bool, log *slog.Logger) (BulkWALPlan, bool, error) {
	var stop pg.LSN
	switch o.Target.Kind {
	case TargetImmediate:
		stop, _ = pg.ParseLSN(m.StopLSN)
	case TargetLSN:
		stop = o.Target.LSN
	}
	budget := int(o.WALPrefetchBytes / max(m.SegmentSize, 1))
	if budget <= 0 {
		return BulkWALPlan{}, false, nil
	}
	count := budget
	if follow {
		count = maxFollowSegments
	}
	plan, err := PlanBulkWAL(ctx, r, m, tli, history, stop, count)
	if follow && len(plan.Segments) > budget {
		plan.Window = budget
	}
	if err != nil {
		if ctx.Err() != nil {
			return plan, false, err
		}
		// Recovery fetches it all itself then: slower, not wrong.
		log.Warn("could not plan the bulk WAL download; recovery fetches WAL as it goes", "err", err)
		return plan, false, nil
	}
	return plan, len(plan.Segments) > 0, nil
}

// bulkWALBackground hands the bulk download to a detached process
// (o.WALProcess: `pgkeep wal-prefetch --bulk`), so that the restore
// returns, and PostgreSQL starts replaying, as soon as the base files are
// written and the first segments are in place, while the rest keeps
// arriving (RunBulkPlan). It returns once the first bulkFirst segments
// are there or the process has ended. The process is then left running.
func bulkWALBackground(ctx context.Context, r *repo.Repository, m *repo.Manifest, o BackupOptions, tli uint32, history []pg.TimelineSwitch, log *slog.Logger) (BulkWALResult, *exec.Cmd, error) {
	plan, ok, err := planBulk(ctx, r, m, o, tli, history, true, log)
	if !ok {
		return BulkWALResult{}, nil, err
	}
	dir := DefaultPrefetchDir(filepath.Join(o.PGData, "pg_wal", RecoveryFileName))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return BulkWALResult{}, nil, fmt.Errorf("bulk WAL: %w", err)
	}
	if err := writeBulkPlan(dir, o.PGData, plan); err != nil {
		return BulkWALResult{}, nil, fmt.Errorf("bulk WAL: %w", err)
	}
	cmd, err := o.WALProcess.startBulk(dir)
	if err != nil {
		os.Remove(filepath.Join(dir, bulkPlanFile))
		log.Warn("could not start the bulk WAL download; recovery fetches WAL as it goes", "err", err)
		return BulkWALResult{}, nil, nil
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	first := plan.Segments[:min(len(plan.Segments), bulkFirst)]
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	res := BulkWALResult{Background: true, Planned: len(plan.Segments), PID: cmd.Process.Pid}
	for {
		have := 0
		for _, wf := range first {
			if _, _, ok := prefetchedName(dir, wf.Name); !ok {
				break
			}
			have++
		}
		done := false
		select {
		case <-ctx.Done():
			cmd.Process.Kill()
			<-exited
			return res, cmd, ctx.Err()
		case <-exited:
			done = true
		case <-t.C:
			done = have == len(first)
		}
		if done {
			res.Segments, res.Bytes = countPrefetched(dir, plan)
			select {
			case <-exited:
				res.Background = false
				res.Complete = plan.Complete && res.Segments == len(plan.Segments)
			default:
			}
			log.Info("bulk WAL download continues in the background", "pid", res.PID,
				"segments_local", res.Segments, "segments_planned", res.Planned, "log", filepath.Join(dir, bulkLog))
			return res, cmd, nil
		}
	}
}

// maxFollowSegments bounds a following plan (256 GiB of 16 MiB segments):
// its list is held in memory and written to the plan file.
const maxFollowSegments = 1 << 14

// bulkFirst is how many segments a restore waits for before it returns
// with the bulk download still running: enough for PostgreSQL's first
// requests, which come before the rest could.
const bulkFirst = 2

// countPrefetched counts plan's leading segments in dir.
func countPrefetched(dir string, plan BulkWALPlan) (int, int64) {
	n := 0
	var bytes int64
	for _, wf := range plan.Segments {
		path, _, ok := prefetchedName(dir, wf.Name)
		if !ok {
			break
		}
		if fi, err := os.Stat(path); err == nil {
			bytes += fi.Size()
		}
		n++
	}
	return n, bytes
}

package restore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pgkeep/pgkeep/internal/fsync"
	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
)

// DefaultWALPrefetchBytes is restore.wal_prefetch_bytes's default: the
// WAL a restore downloads ahead into the prefetch directory.
const DefaultWALPrefetchBytes = 1 << 30

// bulkMarker in the prefetch directory names the last segment a restore's
// bulk download wrote. While recovery has not passed it, the prefetch's
// clean-up keeps the bulk's segments whatever their age: a restore whose
// base files took hours wrote them long before recovery asks for them.
const bulkMarker = ".bulk"

// BulkWALPlan is the WAL recovery will read, in the order it reads it.
type BulkWALPlan struct {
	Segments []pg.WALFile
	// Complete is true when Segments reach the end of what recovery needs
	// (the target's segment or the newest archived one); false when the
	// budget cut the list short and wal-fetch's prefetch takes over.
	Complete    bool
	SegmentSize int64
	// Window, when set, is how many of the plan's segments may be in the
	// prefetch directory at once (the budget, restore.wal_prefetch_bytes):
	// the plan then runs to the end of the archive and the download
	// follows recovery, fetching the next segment as each one is taken.
	// 0: the plan itself is the budget.
	Window int
}

// PlanBulkWAL lists the segments recovery reads from backup m on, along
// timeline tli (history: its switches): for each segment number the
// timeline PostgreSQL reads it from (pg.TimelineForSegment). It stops at
// the first segment that is not archived on that timeline (a parent's
// segment of the same number is never taken instead: the newer timeline
// supersedes it), after the segment holding stop (0: no stop), or after
// maxCount segments.
func PlanBulkWAL(ctx context.Context, r *repo.Repository, m *repo.Manifest, tli uint32, history []pg.TimelineSwitch, stop pg.LSN, maxCount int) (BulkWALPlan, error) {
	plan := BulkWALPlan{SegmentSize: m.SegmentSize}
	if !pg.ValidSegmentSize(m.SegmentSize) {
		return plan, fmt.Errorf("backup %s: invalid segment size %d", m.ID, m.SegmentSize)
	}
	first, err := pg.ParseWALFileName(m.StartWAL)
	if err != nil {
		return plan, fmt.Errorf("backup %s: %w", m.ID, err)
	}
	if tli == 0 {
		tli = first.Timeline
	}
	seg := m.SegmentSize
	perLog := uint64(pg.SegmentsPerLog(seg))
	listed := map[string]map[string]bool{} // "<tli><log>" -> names
	archived := func(wf pg.WALFile) (bool, error) {
		dir := wf.Name[:16]
		names, ok := listed[dir]
		if !ok {
			names = map[string]bool{}
			err := r.ListWAL(ctx, dir, func(name string) error {
				names[name] = true
				return nil
			})
			if err != nil {
				return false, fmt.Errorf("list WAL wal/%s/: %w", dir, err)
			}
			listed[dir] = names
		}
		return names[wf.Name], nil
	}
	for segno := first.SegNo(seg); ; segno++ {
		if len(plan.Segments) >= maxCount {
			return plan, nil
		}
		t := pg.TimelineForSegment(tli, history, segno, seg)
		name := pg.SegmentName(t, uint32(segno/perLog), uint32(segno%perLog))
		wf, _ := pg.ParseWALFileName(name)
		ok, err := archived(wf)
		if err != nil {
			return plan, err
		}
		if !ok {
			plan.Complete = true // the end of the archive on the recovery's path
			return plan, nil
		}
		plan.Segments = append(plan.Segments, wf)
		if stop != 0 && uint64(stop)/uint64(seg) <= segno {
			plan.Complete = true
			return plan, nil
		}
	}
}

// BulkWALOptions configures BulkWAL.
type BulkWALOptions struct {
	Dir         string // the prefetch directory (DefaultPrefetchDir)
	Concurrency int
	Logger      *slog.Logger
	// onSegment, for tests, runs after each segment is in place.
	onSegment func(pg.WALFile)
	// idle bounds how long a window-bound download waits for recovery to
	// take a segment (0: windowIdle).
	idle time.Duration
}

// windowIdle: a download whose window is full and whose segments nobody
// takes for this long stops (the cluster was never started, or is
// stopped); wal-fetch's own prefetch takes over when recovery comes.
const windowIdle = 30 * time.Minute

// BulkWALResult says what BulkWAL did.
type BulkWALResult struct {
	Segments int   // in the prefetch directory when it returned
	Bytes    int64 // their size
	Complete bool  // every segment recovery needs is local
	// Stopped is the first segment that could not be fetched ("" if none).
	Stopped string
	// Background is true when the download goes on in a detached process
	// (PID) after the restore returned; Segments are those already local
	// of the Planned ones.
	Background bool
	Planned    int
	PID        int
}

// BulkWAL downloads plan's segments into o.Dir, o.Concurrency at a time,
// in order, the way wal-fetch's prefetch does (decoded and checked, fsynced
// under a temporary name, then renamed to <segment>.<sha256>), so that
// wal-fetch hands each to PostgreSQL with a rename. The budget is the
// plan's length, or with plan.Window the most segments in the directory
// at once (the download then waits for recovery to take them). A segment that cannot be fetched
// ends the useful range (recovery reads in order); the failure is
// returned only when the context was cancelled, since wal-fetch will
// fetch what is missing itself.
func BulkWAL(ctx context.Context, r *repo.Repository, plan BulkWALPlan, o BulkWALOptions) (BulkWALResult, error) {
	var res BulkWALResult
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if len(plan.Segments) == 0 {
		return res, nil
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return res, fmt.Errorf("bulk WAL: %w", err)
	}
	// Like wal-fetch's prefetch, one download per directory at a time.
	lock, err := os.OpenFile(filepath.Join(o.Dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return res, fmt.Errorf("bulk WAL: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		log.Warn("a WAL prefetch is running in the restored directory; no bulk WAL download", "dir", o.Dir)
		return res, nil
	}
	last := plan.Segments[len(plan.Segments)-1]
	if err := writeFileSync(filepath.Join(o.Dir, bulkMarker), []byte(last.Name+"\n"), 0o600); err != nil {
		return res, fmt.Errorf("bulk WAL: %w", err)
	}
	start := time.Now()
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu     sync.Mutex
		failed = len(plan.Segments) // index of the first failure
		firstE error
		wg     sync.WaitGroup
		bytes  atomic.Int64
		sem    = make(chan struct{}, max(o.Concurrency, 1))
		// inFlight: downloads started and not yet done (window accounting).
		inFlight atomic.Int64
	)
	for i, wf := range plan.Segments {
		sem <- struct{}{}
		mu.Lock()
		stop := i > failed
		mu.Unlock()
		if stop || ctx.Err() != nil {
			<-sem
			break
		}
		if path, _, ok := prefetchedName(o.Dir, wf.Name); ok {
			<-sem
			if fi, err := os.Stat(path); err == nil {
				bytes.Add(fi.Size())
			}
			continue
		}
		if plan.Window > 0 && !waitWindow(ctx, o.Dir, plan.Window, &inFlight, o.idle) {
			<-sem
			if ctx.Err() == nil {
				log.Info("bulk WAL download stops: recovery has not taken a segment for a while; wal-fetch fetches the rest", "next", wf.Name)
				mu.Lock()
				if i < failed {
					failed, firstE = i, ErrWALNotFound // quiet: not a failure
				}
				mu.Unlock()
			}
			break
		}
		wg.Add(1)
		inFlight.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			defer inFlight.Add(-1)
			err := prefetchOne(ctx, r, wf, o.Dir)
			if err != nil {
				mu.Lock()
				if i < failed {
					failed, firstE = i, fmt.Errorf("%s: %w", wf.Name, err)
					cancel() // later segments are of no use before this one
				}
				mu.Unlock()
				return
			}
			bytes.Add(plan.SegmentSize)
			if o.onSegment != nil {
				o.onSegment(wf)
			}
		}()
	}
	wg.Wait()
	// Segments after a failure are useless until it is fetched, and the
	// budget they take may be needed: remove them. Not when the download
	// was called off: the directory may no longer be this download's (a
	// new restore into the same directory), and the names are the same.
	for i := failed + 1; i < len(plan.Segments) && parent.Err() == nil; i++ {
		if path, _, ok := prefetchedName(o.Dir, plan.Segments[i].Name); ok {
			if os.Remove(path) == nil {
				bytes.Add(-plan.SegmentSize)
			}
		}
	}
	if err := fsync.Dir(o.Dir); err != nil {
		return res, fmt.Errorf("bulk WAL: fsync %s: %w", o.Dir, err)
	}
	res.Segments = min(failed, len(plan.Segments))
	res.Bytes = bytes.Load()
	res.Complete = plan.Complete && failed == len(plan.Segments)
	if failed < len(plan.Segments) {
		res.Stopped = plan.Segments[failed].Name
		if parent.Err() != nil {
			return res, fmt.Errorf("bulk WAL: %w", parent.Err())
		}
		if !errors.Is(firstE, ErrWALNotFound) {
			log.Warn("bulk WAL download stopped; recovery's wal-fetch fetches the rest", "file", res.Stopped, "err", firstE)
		}
	}
	log.Info("bulk WAL download", "segments", res.Segments, "bytes", res.Bytes, "complete", res.Complete,
		"elapsed", time.Since(start).Round(time.Millisecond))
	return res, nil
}

// readBulkMarker returns the last segment of a bulk download recorded in
// dir, if any.
func readBulkMarker(dir string) (pg.WALFile, bool) {
	data, err := os.ReadFile(filepath.Join(dir, bulkMarker))
	if err != nil {
		return pg.WALFile{}, false
	}
	wf, err := pg.ParseWALFileName(strings.TrimSpace(string(data)))
	if err != nil || wf.Kind != pg.KindSegment {
		return pg.WALFile{}, false
	}
	return wf, true
}

// waitWindow waits until fewer than window segments are ready in dir or
// being downloaded, and reports whether there is room; false when ctx is
// done or nothing was taken from the full window for idle.
func waitWindow(ctx context.Context, dir string, window int, inFlight *atomic.Int64, idle time.Duration) bool {
	if idle <= 0 {
		idle = windowIdle
	}
	deadline := time.Now().Add(idle)
	last := -1
	for {
		n := readySegments(dir)
		if n+int(inFlight.Load()) < window {
			return true
		}
		if n != last {
			last, deadline = n, time.Now().Add(idle)
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// readySegments counts the prefetched segments in dir (final names only).
func readySegments(dir string) int {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") && len(e.Name()) == 24+1+64 {
			n++
		}
	}
	return n
}

// bulkPlan is bulkPlanFile's content.
type bulkPlan struct {
	// ID tells this plan from a later restore's in the same directory.
	ID          string   `json:"id"`
	PGData      string   `json:"pgdata"`
	SegmentSize int64    `json:"segment_size"`
	Complete    bool     `json:"complete"`
	Window      int      `json:"window,omitempty"`
	Segments    []string `json:"segments"`
}

func writeBulkPlan(dir, pgdata string, plan BulkWALPlan) error {
	p := bulkPlan{ID: fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano()),
		PGData: pgdata, SegmentSize: plan.SegmentSize, Complete: plan.Complete, Window: plan.Window}
	for _, s := range plan.Segments {
		p.Segments = append(p.Segments, s.Name)
	}
	data, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return writeFileSync(filepath.Join(dir, bulkPlanFile), data, 0o600)
}

func readBulkPlan(dir string) (bulkPlan, BulkWALPlan, error) {
	var p bulkPlan
	data, err := os.ReadFile(filepath.Join(dir, bulkPlanFile))
	if err != nil {
		return p, BulkWALPlan{}, err
	}
	if err := json.Unmarshal(data, &p); err != nil {
		return p, BulkWALPlan{}, fmt.Errorf("%s: %w", bulkPlanFile, err)
	}
	plan := BulkWALPlan{SegmentSize: p.SegmentSize, Complete: p.Complete, Window: max(p.Window, 0)}
	if !pg.ValidSegmentSize(p.SegmentSize) {
		return p, plan, fmt.Errorf("%s: invalid segment size %d", bulkPlanFile, p.SegmentSize)
	}
	for _, n := range p.Segments {
		wf, err := pg.ParseWALFileName(n)
		if err != nil || wf.Kind != pg.KindSegment {
			return p, plan, fmt.Errorf("%s: %q is not a segment", bulkPlanFile, n)
		}
		plan.Segments = append(plan.Segments, wf)
	}
	return p, plan, nil
}

// RunBulkPlan is the background bulk download a restore leaves behind
// (`pgkeep wal-prefetch --bulk`): it works through the plan in dir like
// BulkWAL, while the restored cluster already recovers from the segments
// in place. It ends when the plan is done, or as soon as the cluster's
// recovery has ended: the postmaster it saw is gone (stopped, or stopped
// recovery with a FATAL) or the signal file it saw is gone (promoted).
// The plan file is removed on the way out, whatever happened; wal-fetch
// fetches from the repository whatever the download did not leave.
func RunBulkPlan(ctx context.Context, r *repo.Repository, dir string, o BulkWALOptions) error {
	planPath := filepath.Join(dir, bulkPlanFile)
	p, plan, err := readBulkPlan(dir)
	if err != nil {
		os.Remove(planPath)
		return fmt.Errorf("bulk WAL: %w", err)
	}
	// Removed on the way out only if it is still this download's plan.
	defer func() {
		if samePlan(dir, p.ID) {
			os.Remove(planPath)
		}
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if p.PGData != "" {
		go watchRecovery(ctx, cancel, p.PGData, o.Logger)
	}
	// A new restore into the same directory (--force, --delta) replaces
	// the plan: this download is then not wanted any more.
	go func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if !samePlan(dir, p.ID) {
					cancel()
					return
				}
			}
		}
	}()
	o.Dir = dir
	_, err = BulkWAL(ctx, r, plan, o)
	if err != nil && ctx.Err() != nil {
		return nil // recovery ended: nothing left to do
	}
	return err
}

// samePlan reports whether dir's plan is still the one with this id (a
// new restore into the same directory writes its own).
func samePlan(dir, id string) bool {
	p, _, err := readBulkPlan(dir)
	return err == nil && p.ID == id
}

// watchRecovery cancels once the cluster in pgdata has left recovery: a
// postmaster.pid or signal file seen once and gone since. Before the
// cluster starts neither is required, so a download that outruns
// PostgreSQL's start is not stopped.
func watchRecovery(ctx context.Context, cancel func(), pgdata string, log *slog.Logger) {
	exists := func(name string) bool {
		_, err := os.Stat(filepath.Join(pgdata, name))
		return err == nil
	}
	var pidSeen, signalSeen bool
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		pid := exists("postmaster.pid")
		signal := exists("recovery.signal") || exists("standby.signal")
		if (pidSeen && !pid) || (signalSeen && !signal) {
			if log != nil {
				log.Info("recovery has ended or the postmaster is gone; bulk WAL download stops", "postmaster", pid, "signal", signal)
			}
			cancel()
			return
		}
		pidSeen, signalSeen = pidSeen || pid, signalSeen || signal
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// LocalOptions configure a Local scheduler: `pgkeep daemon` on one
// PostgreSQL without Patroni (daemon.ha: none).
type LocalOptions struct {
	// Dir holds the locks and run records (daemon.lock_dir); every daemon
	// of one PostgreSQL on this host must use the same one.
	Dir string
	// Member names this daemon in the run records (the host name).
	Member string
	Jobs   []Job
	Runner Runner
	// PollInterval is how often a daemon that found a scheduled time
	// locked looks again (default 2s).
	PollInterval time.Duration
	// Retries and RetryDelay as in Options (default 3 and 30s).
	Retries    int
	RetryDelay time.Duration
	// KeepRecords is how many final run records per job are kept (default 100).
	KeepRecords int
	Metrics     *Metrics
	Logger      *slog.Logger
	Clock       func() time.Time
}

// Local runs the jobs on this host, exactly once per scheduled time among
// the daemons sharing Dir. For a job J due at T a daemon takes the flock
// of Dir/locks/J.<unix T>.lock (non-blocking); while it holds it no other
// daemon starts T. Under the lock it reads J's records (Dir/J.runs.json):
// a final record of T means done; else the repository is asked (Runner.Find)
// before running, and the result is recorded before the lock is released.
// The lock dies with its process, so a daemon killed mid-run leaves T to
// the next one that polls, which finds the committed backup if there is
// one (the repository's schedule claim lets only one commit per time).
type Local struct {
	o    LocalOptions
	log  *slog.Logger
	jobs []scheduledJob
	mu   sync.Mutex
	err  error // last lock or record I/O error, nil when the last one worked
}

// NewLocal checks the options and creates Dir.
func NewLocal(o LocalOptions) (*Local, error) {
	if o.Runner == nil || o.Dir == "" {
		return nil, errors.New("scheduler: runner and lock directory are required")
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 2 * time.Second
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = 30 * time.Second
	}
	if o.Retries <= 0 {
		o.Retries = 3
	}
	if o.KeepRecords <= 0 {
		o.KeepRecords = 100
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if err := os.MkdirAll(filepath.Join(o.Dir, "locks"), 0o700); err != nil {
		return nil, fmt.Errorf("daemon lock directory: %w", err)
	}
	l := &Local{o: o, log: o.Logger}
	seen := map[string]bool{}
	for _, j := range o.Jobs {
		if j.Name == "" || strings.ContainsAny(j.Name, "/ ") || seen[j.Name] {
			return nil, fmt.Errorf("scheduler: job name %q: empty, duplicate, or contains '/' or a space", j.Name)
		}
		seen[j.Name] = true
		sc, err := ParseSchedule(j.Schedule)
		if err != nil {
			return nil, fmt.Errorf("job %s: %w", j.Name, err)
		}
		l.jobs = append(l.jobs, scheduledJob{j, sc})
		o.Metrics.initJob(j.Name)
	}
	return l, nil
}

// Run schedules the jobs until ctx is done, then aborts running jobs and
// returns.
func (l *Local) Run(ctx context.Context) error {
	for _, j := range l.jobs {
		if f, err := l.readRecords(j.Name); err == nil {
			for _, r := range f.Runs {
				l.o.Metrics.recorded(r)
			}
		}
	}
	var wg sync.WaitGroup
	for _, j := range l.jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.loop(ctx, &wg, j)
		}()
	}
	l.log.Info("scheduler started (no Patroni: local locks)", "dir", l.o.Dir, "jobs", len(l.jobs))
	<-ctx.Done()
	wg.Wait()
	l.log.Info("scheduler stopped")
	return nil
}

func (l *Local) loop(ctx context.Context, wg *sync.WaitGroup, j scheduledJob) {
	var last time.Time
	for ctx.Err() == nil {
		from := l.o.Clock()
		if from.Before(last) {
			from = last
		}
		next := j.sched.Next(from)
		if next.IsZero() {
			l.log.Warn("schedule has no next time", "job", j.Name)
			return
		}
		t := time.NewTimer(next.Sub(l.o.Clock()))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		last = next
		deadline := next.Add(j.Window)
		if j.Window <= 0 {
			deadline = j.sched.Next(next)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.tick(ctx, j, next, deadline)
		}()
	}
}

func (l *Local) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// tick brings one scheduled time to its end: a final record, the window
// passing, or shutdown.
func (l *Local) tick(ctx context.Context, j scheduledJob, t, deadline time.Time) {
	log := l.log.With("job", j.Name, "scheduled", t.Format(time.RFC3339))
	path := filepath.Join(l.o.Dir, "locks", j.Name+"."+strconv.FormatInt(t.Unix(), 10)+".lock")
	for first := true; ctx.Err() == nil; first = false {
		if !first {
			l.sleep(ctx, l.o.PollInterval)
			if ctx.Err() != nil {
				return
			}
		}
		if l.o.Clock().After(deadline) {
			log.Warn("scheduled time given up: window passed without a run", "window_end", deadline.Format(time.RFC3339))
			return
		}
		unlock, ok, err := tryFlock(path)
		if err != nil {
			l.setErr(err)
			log.Warn("cannot take the job's local lock", "err", err)
			continue
		}
		if !ok {
			continue // another daemon on this host runs it
		}
		done := l.runLocked(ctx, log, j, t, path)
		unlock()
		if done {
			return
		}
	}
}

// runLocked runs t under its lock; true when t is finished.
func (l *Local) runLocked(ctx context.Context, log *slog.Logger, j scheduledJob, t time.Time, lockPath string) bool {
	l.o.Metrics.setHeld(j.Name, true)
	defer l.o.Metrics.setHeld(j.Name, false)
	recs, err := l.readRecords(j.Name)
	if err != nil {
		l.setErr(err)
		log.Warn("cannot read the job's run records", "err", err)
		return false
	}
	l.setErr(nil)
	if r, ok := recs.final(t); ok {
		l.o.Metrics.recorded(r)
		os.Remove(lockPath)
		return true
	}
	att := recs.Attempts[strconv.FormatInt(t.Unix(), 10)]
	if l.o.Clock().Before(att.NextAttempt) {
		return false
	}
	rec := Run{Job: j.Name, Kind: j.Kind, Scheduled: t, Node: l.o.Member, Role: "standalone", Attempt: att.Attempt + 1, Started: l.o.Clock().UTC()}
	log = log.With("attempt", rec.Attempt)
	res, found, runErr := l.o.Runner.Find(ctx, j.Job, t)
	if runErr == nil && found {
		return l.adopt(log, j, t, lockPath, rec, res)
	}
	if runErr == nil {
		log.Info("job starting")
		res, runErr = l.o.Runner.Run(ctx, j.Job, t)
	}
	if errors.Is(runErr, ErrAlreadyDone) {
		log.Warn("job result not kept: the scheduled time already has its result in the repository", "err", runErr)
		fres, ffound, ferr := l.o.Runner.Find(ctx, j.Job, t)
		if ferr == nil && ffound {
			return l.adopt(log, j, t, lockPath, rec, fres)
		}
		if ferr == nil {
			ferr = errors.New("not found again")
		}
		runErr = fmt.Errorf("%w (reading that result: %w)", runErr, ferr)
	}
	rec.Finished = l.o.Clock().UTC()
	rec.DurationSeconds = rec.Finished.Sub(rec.Started).Seconds()
	rec.BackupID, rec.Bytes = res.BackupID, res.Bytes
	rec.QuerySeconds = res.QuerySeconds
	if runErr == nil {
		rec.Status = StatusSucceeded
		l.o.Metrics.observe(rec)
		if err := l.writeRecord(j.Name, rec, true); err != nil {
			log.Warn("job finished but its run record could not be written; the next attempt looks in the repository first", "backup_id", rec.BackupID, "err", err)
			return false
		}
		l.o.Metrics.recorded(rec)
		os.Remove(lockPath)
		log.Info("job succeeded", "backup_id", rec.BackupID, "bytes", rec.Bytes, "duration", time.Duration(rec.DurationSeconds*float64(time.Second)).Round(time.Millisecond))
		return true
	}
	rec.Error = runErr.Error()
	if ctx.Err() != nil {
		rec.Status, rec.Attempt = StatusAborted, att.Attempt
		l.o.Metrics.observe(rec)
		log.Warn("job aborted by shutdown", "err", runErr)
		if err := l.writeRecord(j.Name, rec, false); err != nil {
			log.Warn("recording the aborted run failed", "err", err)
		}
		return true
	}
	rec.Status = StatusFailed
	l.o.Metrics.observe(rec)
	if rec.Attempt >= l.o.Retries {
		log.Error("job failed, no attempts left", "err", runErr)
		if err := l.writeRecord(j.Name, rec, true); err != nil {
			log.Warn("recording the failure failed", "err", err)
		}
		os.Remove(lockPath)
		return true
	}
	rec.NextAttempt = l.o.Clock().Add(l.o.RetryDelay).UTC()
	log.Warn("job failed; it will be retried", "err", runErr, "next_attempt", rec.NextAttempt.Format(time.RFC3339))
	if err := l.writeRecord(j.Name, rec, false); err != nil {
		log.Warn("recording the failed attempt failed", "err", err)
	}
	return false
}

func (l *Local) adopt(log *slog.Logger, j scheduledJob, t time.Time, lockPath string, rec Run, res Result) bool {
	rec.Status, rec.Adopted = StatusSucceeded, true
	rec.BackupID, rec.Bytes = res.BackupID, res.Bytes
	if !res.Started.IsZero() {
		rec.Started = res.Started.UTC()
	}
	rec.Finished = l.o.Clock().UTC()
	if !res.Finished.IsZero() {
		rec.Finished = res.Finished.UTC()
	}
	rec.DurationSeconds = rec.Finished.Sub(rec.Started).Seconds()
	if err := l.writeRecord(j.Name, rec, true); err != nil {
		log.Warn("the scheduled time's result was found in the repository but could not be recorded", "backup_id", rec.BackupID, "err", err)
		return false
	}
	l.o.Metrics.recorded(rec)
	os.Remove(lockPath)
	log.Info("job result found in the repository and recorded: not run again", "backup_id", rec.BackupID)
	return true
}

func (l *Local) setErr(err error) {
	l.mu.Lock()
	l.err = err
	l.mu.Unlock()
}

// HealthHandler answers 200 "ok" while the lock directory works, else 503
// with the cause.
func (l *Local) HealthHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		l.mu.Lock()
		err := l.err
		l.mu.Unlock()
		if err != nil {
			http.Error(w, "lock directory: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
}

// localRecords is one job's file of run records: the final records,
// oldest scheduled time first, and the attempts of unfinished times by
// unix scheduled time.
type localRecords struct {
	Runs     []Run          `json:"runs"`
	Attempts map[string]Run `json:"attempts,omitempty"`
}

func (f localRecords) final(t time.Time) (Run, bool) {
	for i := len(f.Runs) - 1; i >= 0; i-- {
		if f.Runs[i].Scheduled.Equal(t) {
			return f.Runs[i], true
		}
	}
	return Run{}, false
}

func recordsPath(dir, job string) string { return filepath.Join(dir, job+".runs.json") }

func (l *Local) readRecords(job string) (localRecords, error) {
	return readLocalRecords(recordsPath(l.o.Dir, job))
}

func readLocalRecords(path string) (localRecords, error) {
	var f localRecords
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return f, fmt.Errorf("run records: %w", err)
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return f, fmt.Errorf("run records %s: %w", path, err)
	}
	return f, nil
}

// writeRecord adds rec to its job's file, as a final record or as the
// attempt of its scheduled time, under the file's own lock (daemons
// finishing different times of one job at once), by writing a new file
// and renaming it.
func (l *Local) writeRecord(job string, rec Run, final bool) error {
	path := recordsPath(l.o.Dir, job)
	unlock, err := flock(path + ".lock")
	if err != nil {
		return err
	}
	defer unlock()
	f, err := readLocalRecords(path)
	if err != nil {
		return err
	}
	key := strconv.FormatInt(rec.Scheduled.Unix(), 10)
	if final {
		delete(f.Attempts, key)
		f.Runs = append(f.Runs, rec)
		sort.SliceStable(f.Runs, func(a, b int) bool { return f.Runs[a].Scheduled.Before(f.Runs[b].Scheduled) })
		if n := len(f.Runs) - l.o.KeepRecords; n > 0 {
			f.Runs = f.Runs[n:]
		}
	} else {
		if f.Attempts == nil {
			f.Attempts = map[string]Run{}
		}
		f.Attempts[key] = rec
	}
	// Attempts of times older than the oldest kept record are dropped.
	if len(f.Runs) > 0 {
		for k, a := range f.Attempts {
			if a.Scheduled.Before(f.Runs[0].Scheduled) {
				delete(f.Attempts, k)
			}
		}
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("run records: %w", err)
	}
	tmp := path + ".tmp"
	w, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("run records: %w", err)
	}
	_, err = w.Write(append(b, '\n'))
	if err == nil {
		err = w.Sync()
	}
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("run records: %w", err)
	}
	return nil
}

// LocalLatestRuns is the newest run of each job recorded in dir (a
// standalone daemon's lock directory), by job name: its newest final
// record, or a newer attempt.
func LocalLatestRuns(dir string) ([]Run, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.runs.json"))
	if err != nil {
		return nil, fmt.Errorf("run records: %w", err)
	}
	out := []Run{}
	for _, p := range paths {
		f, err := readLocalRecords(p)
		if err != nil {
			return nil, err
		}
		var last Run
		for _, r := range f.Runs {
			if r.Scheduled.After(last.Scheduled) || last.Job == "" {
				last = r
			}
		}
		for _, r := range f.Attempts {
			if r.Scheduled.After(last.Scheduled) || last.Job == "" {
				last = r
			}
		}
		if last.Job != "" {
			out = append(out, last)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Job < out[j].Job })
	return out, nil
}

// tryFlock takes an exclusive flock on path without waiting; ok false
// when another process holds it.
func tryFlock(path string) (unlock func(), ok bool, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, true, nil
}

// flock takes an exclusive flock on path, waiting at most 10s.
func flock(path string) (unlock func(), err error) {
	for i := 0; i < 100; i++ {
		unlock, ok, err := tryFlock(path)
		if err != nil || ok {
			return unlock, err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil, fmt.Errorf("lock %s: still held after 10s", path)
}

// Package scheduler runs cron-scheduled jobs (backups, retention, verify)
// on the right member of a Patroni cluster, exactly once per scheduled
// time, across failovers.
//
// Every daemon reads the same Patroni view from etcd and computes the same
// ranking of eligible members (Eligible). For a job J due at time T:
//
//   - the first eligible member takes the etcd lock <J>/<unix T> (a key on
//     a lease, ha.TryLock) and runs the job while it holds it; a lost lock
//     or a topology that no longer allows this member cancels the run;
//   - the repository, not etcd, says for sure whether T has its backup:
//     a backup is committed only with a claim of J@T in the repository
//     (create-if-absent), so at most one is ever committed per scheduled
//     time, even by a holder that lost its lock or a daemon on a stale
//     etcd. Before running, the holder asks the Runner (Find) whether the
//     repository already has T's result, and records that one instead;
//   - the record runs/<J>/<unix T> is written through ha.Lock.Create: one
//     transaction that needs the lock still held and no such record yet.
//     A result that could not be recorded (lock lost, etcd unreachable
//     past the record's own deadline) is not undone: the next attempt
//     finds it with Find and records it;
//   - the other eligible members poll; once they have seen neither the
//     lock nor the final record for TakeoverTimeout they take the lock
//     and run the job themselves (the holder died, or never started);
//   - a failed run writes attempts/<J>/<unix T> (attempt count, earliest
//     next attempt) and releases the lock; the member that is first for
//     the topology then current retries, up to Retries attempts, after
//     which a final "failed" record is written;
//   - while etcd cannot be read no job starts; the log says so once.
//
// A scheduled time is given up when its window (Job.Window, default until
// the job's next scheduled time) has passed without a start.
package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/pgkeep/pgkeep/ha"
)

// Run statuses in records and metrics.
const (
	StatusSucceeded = "succeeded"
	StatusFailed    = "failed"
	// StatusAborted: stopped by the daemon's shutdown; does not count as
	// an attempt.
	StatusAborted = "aborted"
	// StatusUnrecorded: the run finished (its backup is committed) but
	// its record could not be written under the lock; the next attempt
	// finds the result in the repository and records it.
	StatusUnrecorded = "unrecorded"
	// StatusInterrupted: the run stopped because its lock was lost (etcd
	// unreachable for the lock's TTL); not counted as an attempt.
	StatusInterrupted = "interrupted"
)

// ErrAlreadyDone is wrapped by a Runner's error when the scheduled time
// turned out to have its result already (another run committed a backup
// for it first); the scheduler then records that result (Find).
var ErrAlreadyDone = errors.New("the scheduled time already has its result")

// JobKind is what a job does. The scheduler does not look inside: the
// daemon's Runner gives each kind its body (daemon/jobs.go, the one table
// of kinds).
type JobKind string

// The job kinds pgkeep daemon runs.
const (
	JobBackup    JobKind = "backup"
	JobRetention JobKind = "retention"
	JobVerify    JobKind = "verify"
	JobDrill     JobKind = "drill"
)

// Job is one scheduled job.
type Job struct {
	Name string
	// Kind is what the Runner does; the scheduler passes it on.
	Kind JobKind
	// Schedule is a cron expression with an optional seconds field
	// ("0 30 1 * * *", "30 1 * * *", "@daily"), in the time zone a
	// CRON_TZ= prefix names ("CRON_TZ=Europe/Paris 0 2 * * *"), else in
	// the machine's local time. pgkeep daemon always sets the prefix.
	Schedule string
	RunOn    Policy
	// MaxLag is the largest replication lag in bytes of a replica that
	// may run the job.
	MaxLag uint64
	// Window is how long after its scheduled time a run may still start
	// (or be taken over, or retried); 0 means until the next scheduled time.
	Window time.Duration
}

// Result is what a successful run produced.
type Result struct {
	BackupID string
	Bytes    int64
	// Started and Finished are the run's times when Find reports a result
	// of an earlier run (zero: unknown).
	Started, Finished time.Time
	// QuerySeconds is a drill's restore-to-query time.
	QuerySeconds float64
}

// Runner does the work of a job. Run must stop and clean up promptly when
// ctx is done (the lock was lost, the topology changed, or shutdown); a
// run of a backup job commits its backup only as the one backup of its
// scheduled time (else an error wrapping ErrAlreadyDone). Find reports
// the result the repository already holds for a scheduled time (found
// false when none, and always for jobs that leave no trace there).
type Runner interface {
	Run(ctx context.Context, job Job, scheduled time.Time) (Result, error)
	Find(ctx context.Context, job Job, scheduled time.Time) (res Result, found bool, err error)
}

// Run is the record of one run, stored in etcd.
type Run struct {
	Job             string    `json:"job"`
	Kind            JobKind   `json:"kind"`
	Scheduled       time.Time `json:"scheduled"`
	Node            string    `json:"node"`
	Role            string    `json:"role"`
	Status          string    `json:"status"`
	BackupID        string    `json:"backup_id,omitempty"`
	Started         time.Time `json:"started"`
	Finished        time.Time `json:"finished"`
	DurationSeconds float64   `json:"duration_seconds"`
	Bytes           int64     `json:"bytes"`
	Error           string    `json:"error,omitempty"`
	Attempt         int       `json:"attempt"`
	// Adopted is true when the recording daemon did not run the job but
	// found the scheduled time's result in the repository (a run whose
	// own record could not be written); Node is then the recorder.
	Adopted bool `json:"adopted,omitempty"`
	// QuerySeconds is a drill's restore-to-query time (docs/drill.md).
	QuerySeconds float64 `json:"restore_to_query_seconds,omitempty"`
	// NextAttempt is when a failed attempt may be retried (attempt records).
	NextAttempt time.Time `json:"next_attempt,omitzero"`
}

// Options configure a Scheduler.
type Options struct {
	HA *ha.Client
	// Member is this node's Patroni member name.
	Member string
	Jobs   []Job
	Runner Runner
	// LockTTL is the lease of a job's lock (default 15s): a holder that
	// dies frees it after at most this long.
	LockTTL time.Duration
	// TakeoverTimeout is how long the second member in line waits,
	// having seen neither lock nor result, before it runs the job itself
	// (default 30s). The member at rank k (0 first) waits TakeoverTimeout
	// + (k-1)*TakeoverStagger, so the ranking holds for takeovers too: the
	// next preferred member takes over first, and a later one only when
	// that one did not either.
	TakeoverTimeout time.Duration
	// TakeoverStagger separates the takeover delays of successive ranks
	// (default 3 poll intervals, at least 5s): more than a member needs to
	// see that its delay passed and take the lock.
	TakeoverStagger time.Duration
	// PollInterval is how often waiting members read etcd (default 2s).
	PollInterval time.Duration
	// Retries is how many attempts a scheduled time gets (default 3);
	// RetryDelay separates them (default 30s).
	Retries    int
	RetryDelay time.Duration
	// KeepRecords is how many final run records per job stay in etcd
	// (default 100).
	KeepRecords int
	Metrics     *Metrics
	Logger      *slog.Logger
	// Clock is this machine's clock (default time.Now); tests skew it.
	Clock func() time.Time
}

// Scheduler runs jobs; see the package documentation.
type Scheduler struct {
	o    Options
	log  *slog.Logger
	jobs []scheduledJob
	mu   sync.Mutex
	etcd error // last etcd error, nil when the last request succeeded
	// probed is false until etcd answered or failed once.
	probed bool
	// outage is true once an etcd outage was logged, until etcd answers.
	outage bool
	// held counts, per job, the locks this daemon holds and has not lost
	// (ticks of one job may overlap); lost marks lock names already
	// counted out by the lock-lost hook.
	held map[string]int
	lost map[string]bool
	clk  clocks
}

type scheduledJob struct {
	Job
	sched cron.Schedule
}

var parser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ParseSchedule checks a cron expression.
func ParseSchedule(spec string) (cron.Schedule, error) {
	s, err := parser.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("schedule %q: %w", spec, err)
	}
	return s, nil
}

// New checks the options.
func New(o Options) (*Scheduler, error) {
	if o.HA == nil || o.Runner == nil {
		return nil, errors.New("scheduler: HA client and runner are required")
	}
	if o.Member == "" {
		return nil, errors.New("scheduler: member name is required")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.LockTTL, 15*time.Second)
	def(&o.TakeoverTimeout, 30*time.Second)
	def(&o.PollInterval, 2*time.Second)
	def(&o.TakeoverStagger, max(3*o.PollInterval, 5*time.Second))
	def(&o.RetryDelay, 30*time.Second)
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
	s := &Scheduler{o: o, log: o.Logger, held: map[string]int{}, lost: map[string]bool{}, clk: clocks{peers: map[string]*peerClock{}, ready: make(chan struct{})}}
	o.HA.SetLockLostHook(s.lockLost)
	seen := map[string]bool{}
	for _, j := range o.Jobs {
		if j.Name == "" || strings.ContainsAny(j.Name, "/ ") || seen[j.Name] {
			return nil, fmt.Errorf("scheduler: job name %q: empty, duplicate, or contains '/' or a space", j.Name)
		}
		seen[j.Name] = true
		if _, err := ParsePolicy(string(j.RunOn)); err != nil {
			return nil, fmt.Errorf("job %s: %w", j.Name, err)
		}
		sc, err := ParseSchedule(j.Schedule)
		if err != nil {
			return nil, fmt.Errorf("job %s: %w", j.Name, err)
		}
		s.jobs = append(s.jobs, scheduledJob{j, sc})
		o.Metrics.initJob(j.Name)
	}
	return s, nil
}

// Run schedules the jobs until ctx is done, then aborts running jobs,
// releases their locks and returns.
func (s *Scheduler) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	// etcd's state is known from the start, not one poll interval later:
	// pgkeep_etcd_up and /healthz are absent / 503 only until this answers.
	s.probeOnce(ctx, func(ctx context.Context) error { _, err := s.o.HA.List(ctx, "clocks/"); return err })
	if n, err := s.o.HA.MigrateRecords(ctx); err != nil {
		s.log.Warn("moving run records from their old place under Patroni's prefix failed; will try at the next start", "err", err)
	} else if n > 0 {
		s.log.Info("moved run records from their old place under Patroni's prefix", "records", n)
	}
	s.loadLastRecorded(ctx)
	for _, j := range s.jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.loop(ctx, &wg, j)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.probe(ctx)
	}()
	s.log.Info("scheduler started", "member", s.o.Member, "jobs", len(s.jobs))
	<-ctx.Done()
	wg.Wait()
	s.log.Info("scheduler stopped")
	return nil
}

func (s *Scheduler) loop(ctx context.Context, wg *sync.WaitGroup, j scheduledJob) {
	// A scheduled time that comes due while the clocks settle is still
	// this daemon's to run or take over (tick never starts it early):
	// skipping it would leave it to a member further down the ranking.
	// That time is the cluster's clock at start, known only once the peers'
	// clocks are: a node whose own clock runs ahead would otherwise start
	// from its own time and skip the times the cluster has not reached yet,
	// leaving each of them to a takeover.
	start := s.now()
	// Not before the other daemons' clocks are known (a few heartbeats).
	select {
	case <-ctx.Done():
		return
	case <-s.clk.ready:
	}
	now := s.now()
	from := s.clusterNow().Add(-now.Sub(start))
	for ctx.Err() == nil {
		next := j.sched.Next(from)
		if next.IsZero() {
			s.log.Warn("schedule has no next time", "job", j.Name)
			return
		}
		t := time.NewTimer(next.Sub(s.clusterNow()))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		// The cluster's clock may step back: never fire a time twice.
		from = s.clusterNow()
		if from.Before(next) {
			from = next
		}
		deadline := next.Add(j.Window)
		if j.Window <= 0 {
			deadline = j.sched.Next(next)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.tick(ctx, j, next, deadline)
		}()
	}
}

// LockName is the lock of a job's scheduled time, RecordName its final
// record, AttemptName its attempts record.
func LockName(job string, t time.Time) string { return job + "/" + strconv.FormatInt(t.Unix(), 10) }
func RecordName(job string, t time.Time) string {
	return "runs/" + LockName(job, t)
}
func AttemptName(job string, t time.Time) string {
	return "attempts/" + LockName(job, t)
}

func (s *Scheduler) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// tick brings one scheduled time of one job to its end: a final record,
// or the window passing, or shutdown.
func (s *Scheduler) tick(ctx context.Context, j scheduledJob, t, deadline time.Time) {
	lockName := LockName(j.Name, t)
	log := s.log.With("job", j.Name, "scheduled", t.Format(time.RFC3339))
	var absentSince time.Time // when this member first saw no lock and no result
	for ; ctx.Err() == nil; s.sleep(ctx, s.o.PollInterval) {
		// The cluster's time, not this node's: a clock running ahead
		// must not start a scheduled time early (see clock.go).
		now := s.clusterNow()
		if now.Before(t) {
			continue
		}
		var final, att Run
		done, err := s.o.HA.Get(ctx, RecordName(j.Name, t), &final)
		if err == nil {
			_, err = s.o.HA.Get(ctx, AttemptName(j.Name, t), &att)
		}
		if err != nil {
			s.etcdDown(err)
			absentSince = time.Time{}
			if now.After(deadline) {
				log.Warn("scheduled time given up: etcd unreachable for the whole window")
				return
			}
			continue
		}
		s.etcdUp()
		if done {
			s.o.Metrics.recorded(final)
			return
		}
		if now.After(deadline) {
			log.Warn("scheduled time given up: window passed without a run", "window_end", deadline.Format(time.RFC3339))
			return
		}
		if now.Before(att.NextAttempt) {
			absentSince = time.Time{}
			continue
		}
		view, err := s.o.HA.View(ctx)
		if err != nil {
			s.etcdDown(err)
			absentSince = time.Time{}
			continue
		}
		el := Eligible(view, j.RunOn, j.MaxLag)
		rank := index(el, s.o.Member)
		if rank < 0 {
			absentSince = time.Time{}
			continue
		}
		if rank > 0 {
			held, err := s.o.HA.Held(ctx, lockName)
			if err != nil {
				s.etcdDown(err)
				absentSince = time.Time{}
				continue
			}
			if held {
				absentSince = time.Time{}
				continue
			}
			if absentSince.IsZero() {
				absentSince = now
			}
			if now.Sub(absentSince) < s.takeoverDelay(rank) {
				continue
			}
			log.Info("taking the job over: no run seen", "first_in_line", el[0], "rank", rank, "waited", now.Sub(absentSince).Round(time.Second))
		}
		lock, err := s.o.HA.TryLock(ctx, lockName, s.o.LockTTL)
		if errors.Is(err, ha.ErrLocked) {
			absentSince = time.Time{}
			continue
		}
		if err != nil {
			if ctx.Err() == nil {
				s.etcdDown(err)
			}
			absentSince = time.Time{}
			continue
		}
		if s.runLocked(ctx, log, j, t, lock, view) {
			return
		}
		absentSince = time.Time{}
	}
}

// takeoverDelay is how long the member at rank (> 0) waits without seeing
// a lock or a result before it runs the job.
func (s *Scheduler) takeoverDelay(rank int) time.Duration {
	return s.o.TakeoverTimeout + time.Duration(rank-1)*s.o.TakeoverStagger
}

func index(names []string, name string) int {
	for i, n := range names {
		if n == name {
			return i
		}
	}
	return -1
}

// now is this daemon's clock (Options.Clock).
func (s *Scheduler) now() time.Time { return s.o.Clock() }

// bg is a context for recording and releasing after shutdown began.
func (s *Scheduler) bg() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

// runLocked runs the job under lock and records the result; true when the
// scheduled time is finished (final record written or found).
func (s *Scheduler) runLocked(ctx context.Context, log *slog.Logger, j scheduledJob, t time.Time, lock *ha.Lock, view ha.Cluster) bool {
	s.setHeld(j.Name, lock.Key(), true)
	defer func() {
		s.setHeld(j.Name, lock.Key(), false)
		rctx, cancel := s.bg()
		defer cancel()
		if err := lock.Release(rctx); err != nil {
			log.Warn("releasing the lock failed; it expires with its lease", "err", err)
		}
	}()
	// The previous holder may have recorded its result just before
	// releasing: look again now that no one else can.
	var final, att Run
	done, err := s.o.HA.Get(ctx, RecordName(j.Name, t), &final)
	if err == nil {
		_, err = s.o.HA.Get(ctx, AttemptName(j.Name, t), &att)
	}
	if err != nil || done {
		return done
	}
	role, start := "", ha.Member{}
	if m, ok := view.Member(s.o.Member); ok {
		role, start = m.Role, m
	}
	rec := Run{Job: j.Name, Kind: j.Kind, Scheduled: t, Node: s.o.Member, Role: role, Attempt: att.Attempt + 1, Started: s.now().UTC()}
	log = log.With("attempt", rec.Attempt)

	// The repository, not etcd, knows for sure whether this time has its
	// result: a run whose record was lost (its lock expired while etcd was
	// unreachable) may have committed it.
	res, found, runErr := s.o.Runner.Find(ctx, j.Job, t)
	if runErr == nil && found {
		return s.adopt(log, j, t, lock, rec, res)
	}
	if runErr == nil {
		log.Info("job starting", "role", role)
		runCtx, cancel := context.WithCancelCause(ctx)
		watchDone := make(chan struct{})
		go func() {
			defer close(watchDone)
			s.watch(runCtx, cancel, j, lock, start)
		}()
		res, runErr = s.o.Runner.Run(runCtx, j.Job, t)
		if runErr != nil && context.Cause(runCtx) == errLockLost {
			runErr = fmt.Errorf("%w: %w", errLockLost, runErr)
		}
		cancel(nil)
		<-watchDone
	}
	if errors.Is(runErr, ErrAlreadyDone) {
		// Another run committed this time's backup first (it lost its
		// lock, or runs against another etcd): that one is the result.
		log.Warn("job result not kept: the scheduled time already has its result in the repository", "err", runErr)
		fres, ffound, ferr := s.o.Runner.Find(ctx, j.Job, t)
		if ferr == nil && ffound {
			return s.adopt(log, j, t, lock, rec, fres)
		}
		if ferr == nil {
			ferr = errors.New("not found again")
		}
		runErr = fmt.Errorf("%w (reading that result: %w)", runErr, ferr)
	}
	rec.Finished = s.now().UTC()
	rec.DurationSeconds = rec.Finished.Sub(rec.Started).Seconds()
	rec.BackupID, rec.Bytes = res.BackupID, res.Bytes
	rec.QuerySeconds = res.QuerySeconds

	rctx, rcancel := s.bg()
	defer rcancel()
	if runErr == nil {
		rec.Status = StatusSucceeded
		if err := s.record(lock, RecordName(j.Name, t), rec); err != nil {
			rec.Status = StatusUnrecorded
			s.o.Metrics.observe(rec)
			s.unrecorded(log, j, t, rec, err)
			return false
		}
		s.o.Metrics.observe(rec)
		s.o.Metrics.recorded(rec)
		log.Info("job succeeded", "backup_id", rec.BackupID, "bytes", rec.Bytes, "duration", time.Duration(rec.DurationSeconds*float64(time.Second)).Round(time.Millisecond))
		s.prune(rctx, j.Name)
		return true
	}
	rec.Error = runErr.Error()
	if ctx.Err() != nil || errors.Is(runErr, errLockLost) {
		// Shutdown or a lost lock: not this time's fault, not an attempt;
		// another member (or this one, once it holds the lock again) runs it.
		rec.Status, rec.Attempt = StatusAborted, att.Attempt
		msg := "job aborted by shutdown"
		if ctx.Err() == nil {
			rec.Status, msg = StatusInterrupted, "job interrupted: its lock was lost; the scheduled time is run again under a new lock"
		}
		s.o.Metrics.observe(rec)
		log.Warn(msg, "err", runErr)
		if err := s.o.HA.Put(rctx, AttemptName(j.Name, t), rec); err != nil {
			log.Warn("recording the "+rec.Status+" run failed", "err", err)
		}
		return ctx.Err() != nil
	}
	rec.Status = StatusFailed
	s.o.Metrics.observe(rec)
	if rec.Attempt >= s.o.Retries {
		log.Error("job failed, no attempts left", "err", runErr)
		if err := s.record(lock, RecordName(j.Name, t), rec); err != nil {
			log.Warn("recording the failure failed", "err", err)
		}
		return true
	}
	rec.NextAttempt = s.now().Add(s.o.RetryDelay).UTC()
	log.Warn("job failed; it will be retried on the member right for the topology then", "err", runErr, "next_attempt", rec.NextAttempt.Format(time.RFC3339))
	if err := s.o.HA.Put(rctx, AttemptName(j.Name, t), rec); err != nil {
		log.Warn("recording the failed attempt failed", "err", err)
	}
	return false
}

// adopt records a result the repository already holds for t (found by
// Find) as the scheduled time's success; true once recorded.
func (s *Scheduler) adopt(log *slog.Logger, j scheduledJob, t time.Time, lock *ha.Lock, rec Run, res Result) bool {
	rec.Status, rec.Adopted = StatusSucceeded, true
	rec.BackupID, rec.Bytes = res.BackupID, res.Bytes
	if !res.Started.IsZero() {
		rec.Started = res.Started.UTC()
	}
	rec.Finished = s.now().UTC()
	if !res.Finished.IsZero() {
		rec.Finished = res.Finished.UTC()
	}
	rec.DurationSeconds = rec.Finished.Sub(rec.Started).Seconds()
	if err := s.record(lock, RecordName(j.Name, t), rec); err != nil {
		log.Warn("the scheduled time's result was found in the repository but could not be recorded; the next attempt tries again", "backup_id", rec.BackupID, "err", err)
		return false
	}
	s.o.Metrics.recorded(rec)
	log.Info("job result found in the repository and recorded: not run again", "backup_id", rec.BackupID)
	rctx, cancel := s.bg()
	defer cancel()
	s.prune(rctx, j.Name)
	return true
}

// unrecorded says truthfully what happens to a finished run whose record
// could not be written: whether the repository holds its result (the next
// attempt records it) or not (the next attempt runs the job again).
func (s *Scheduler) unrecorded(log *slog.Logger, j scheduledJob, t time.Time, rec Run, err error) {
	fctx, cancel := s.bg()
	defer cancel()
	_, found, ferr := s.o.Runner.Find(fctx, j.Job, t)
	switch {
	case ferr == nil && found:
		log.Warn("job finished and its result is in the repository, but its run record could not be written; the next attempt records it from the repository, it does not run the job again", "backup_id", rec.BackupID, "err", err)
	case ferr == nil:
		log.Warn("job finished but its run record could not be written; the next attempt runs the job again", "err", err)
	default:
		log.Warn("job finished but its run record could not be written; the next attempt looks for its result in the repository before running the job", "backup_id", rec.BackupID, "err", err, "find_err", ferr)
	}
}

var (
	errLockLost = errors.New("job lock lost (etcd unreachable or lease expired)")
	errTopology = errors.New("topology changed: this member may no longer run the job")
)

// watch cancels a run when its lock is lost, when the Patroni view says
// this member may no longer run the job (lagging, tagged nobackup, no
// longer a healthy replica), or when the member's footing changed under
// the run: promoted or demoted (role), a new timeline, PostgreSQL not
// running. A backup begun on a standby that is now a primary (or the
// reverse) is no backup to keep; the retry runs where the new topology
// says. A view that cannot be read does not cancel: losing etcd shows as a
// lost lock after the lock's TTL.
func (s *Scheduler) watch(ctx context.Context, cancel context.CancelCauseFunc, j scheduledJob, lock *ha.Lock, start ha.Member) {
	t := time.NewTicker(s.o.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-lock.Lost():
			cancel(errLockLost)
			return
		case <-t.C:
			view, err := s.o.HA.View(ctx)
			if err != nil {
				continue
			}
			if index(Eligible(view, j.RunOn, j.MaxLag), s.o.Member) < 0 {
				_, why := Choose(view, j.RunOn, j.MaxLag)
				s.log.Warn("aborting the job: this member may no longer run it", "job", j.Name, "member", s.o.Member, "now", why)
				cancel(errTopology)
				return
			}
			if why := footingChanged(start, view, s.o.Member); why != "" {
				s.log.Warn("aborting the job: this member changed under it", "job", j.Name, "member", s.o.Member, "change", why)
				cancel(errTopology)
				return
			}
		}
	}
}

// footingChanged says how member changed since start ("" if it did not):
// role (promoted, demoted), timeline, or state.
func footingChanged(start ha.Member, view ha.Cluster, member string) string {
	now, ok := view.Member(member)
	switch {
	case start.Name == "":
		return "" // not in the view at start: nothing to compare
	case !ok:
		return "its member key is gone"
	case isPrimaryRole(start.Role) != isPrimaryRole(now.Role):
		return fmt.Sprintf("role %s -> %s", start.Role, now.Role)
	case start.Timeline != 0 && now.Timeline != 0 && start.Timeline != now.Timeline:
		return fmt.Sprintf("timeline %d -> %d", start.Timeline, now.Timeline)
	case now.State != "running" && now.State != "streaming":
		return fmt.Sprintf("state %q", now.State)
	}
	return ""
}

func isPrimaryRole(role string) bool {
	return role == "master" || role == "primary" || role == "standby_leader"
}

// record writes a final record under the lock, retrying transient etcd
// errors until recordTimeout, on its own deadline (not the caller's, not
// shutdown's): a finished run's record is worth waiting for. A record that
// exists and is this run's counts as written (the first try succeeded but
// its answer was lost).
func (s *Scheduler) record(lock *ha.Lock, name string, rec Run) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.recordTimeout())
	defer cancel()
	var err error
	for ctx.Err() == nil {
		err = lock.Create(ctx, name, rec)
		if err == nil || errors.Is(err, ha.ErrNotHeld) {
			return err
		}
		if errors.Is(err, ha.ErrExists) {
			var got Run
			if found, gerr := s.o.HA.Get(ctx, name, &got); gerr == nil && found && got.Node == rec.Node && got.Started.Equal(rec.Started) {
				return nil
			}
			return err
		}
		s.sleep(ctx, time.Second)
	}
	return err
}

// recordTimeout bounds the writing of one record: two lock TTLs (the
// lease outlives a short etcd pause) plus ten seconds.
func (s *Scheduler) recordTimeout() time.Duration { return 2*s.o.LockTTL + 10*time.Second }

// prune keeps the newest KeepRecords final records of a job and drops
// attempt records older than that.
func (s *Scheduler) prune(ctx context.Context, job string) {
	for _, prefix := range []string{"runs/" + job + "/", "attempts/" + job + "/"} {
		es, err := s.o.HA.List(ctx, prefix)
		if err != nil {
			return
		}
		sort.Slice(es, func(a, b int) bool { return nameTime(es[a].Name) < nameTime(es[b].Name) })
		for i := 0; i < len(es)-s.o.KeepRecords; i++ {
			if err := s.o.HA.Delete(ctx, es[i].Name); err != nil {
				return
			}
		}
	}
}

func nameTime(name string) int64 {
	n, _ := strconv.ParseInt(name[strings.LastIndex(name, "/")+1:], 10, 64)
	return n
}

// loadLastRecorded sets the last-success and last-failure metrics from
// the final records at start.
func (s *Scheduler) loadLastRecorded(ctx context.Context) {
	runs, err := FinalRuns(ctx, s.o.HA)
	if err != nil {
		return
	}
	for _, r := range runs {
		s.o.Metrics.recorded(r)
	}
}

// FinalRuns reads every final run record (all jobs, every scheduled time
// still kept), oldest scheduled time first. LatestRuns is the newest run
// of each job instead.
func FinalRuns(ctx context.Context, c *ha.Client) ([]Run, error) {
	out, err := readRuns(ctx, c, "runs/")
	if err != nil {
		return nil, err
	}
	sort.SliceStable(out, func(a, b int) bool { return out[a].Scheduled.Before(out[b].Scheduled) })
	return out, nil
}

// LatestRuns is the newest run of each job, by job name: its newest final
// record, or a newer attempt (failed and awaiting a retry, or aborted).
func LatestRuns(ctx context.Context, c *ha.Client) ([]Run, error) {
	last := map[string]Run{}
	for _, prefix := range []string{"runs/", "attempts/"} {
		runs, err := readRuns(ctx, c, prefix)
		if err != nil {
			return nil, err
		}
		for _, r := range runs {
			if cur, ok := last[r.Job]; r.Job != "" && (!ok || r.Scheduled.After(cur.Scheduled)) {
				last[r.Job] = r
			}
		}
	}
	out := make([]Run, 0, len(last))
	for _, r := range last {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Job < out[j].Job })
	return out, nil
}

// readRuns decodes the records under prefix, skipping any that are not runs.
func readRuns(ctx context.Context, c *ha.Client, prefix string) ([]Run, error) {
	es, err := c.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	var out []Run
	for _, e := range es {
		var r Run
		if json.Unmarshal(e.Value, &r) == nil {
			out = append(out, r)
		}
	}
	return out, nil
}

// setHeld counts a lock of job in (taken) or out (released); a lock the
// lost hook counted out already is not counted out twice.
func (s *Scheduler) setHeld(job, lock string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case on:
		s.held[job]++
		delete(s.lost, lock)
	case s.lost[lock]:
		delete(s.lost, lock)
	default:
		s.held[job]--
	}
	s.o.Metrics.setHeld(job, s.held[job] > 0)
}

// lockLost runs (from ha) the moment a lock is lost, before ha logs it:
// lock_held drops and etcd counts as down at once, without waiting for
// the run to stop or for the next etcd request to fail. The probe says
// when etcd answers again.
func (s *Scheduler) lockLost(name string) {
	job, _, _ := strings.Cut(name, "/")
	s.mu.Lock()
	if !s.lost[name] {
		s.lost[name] = true
		s.held[job]--
		s.o.Metrics.setHeld(job, s.held[job] > 0)
	}
	if s.etcd == nil {
		s.etcd = fmt.Errorf("job lock %s lost: etcd did not renew its lease within the lock TTL", name)
	}
	s.mu.Unlock()
	s.o.Metrics.setEtcdUp(false)
}

// probe asks etcd every poll interval whether it answers (the clock
// heartbeat, a write and a read), so /healthz and pgkeep_etcd_up follow
// etcd within about two poll intervals even while every job is waiting or
// running (and makes no other request).
func (s *Scheduler) probe(ctx context.Context) {
	t := time.NewTicker(s.o.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.probeOnce(ctx, s.heartbeat)
	}
}

// probeOnce asks etcd once (the heartbeat, or at start a read that does
// not count as one of the heartbeats scheduling waits for), bounded by
// twice the poll interval (1 to 5 s).
func (s *Scheduler) probeOnce(ctx context.Context, ask func(context.Context) error) {
	timeout := min(max(2*s.o.PollInterval, time.Second), 5*time.Second)
	pctx, cancel := context.WithTimeout(ctx, timeout)
	err := ask(pctx)
	cancel()
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		s.etcdDown(err)
	} else {
		s.etcdUp()
	}
}

func (s *Scheduler) etcdDown(err error) {
	s.mu.Lock()
	first := !s.outage
	s.etcd, s.outage, s.probed = err, true, true
	s.mu.Unlock()
	s.o.Metrics.setEtcdUp(false)
	if first {
		s.log.Warn("cannot read the cluster from etcd: no job starts until it answers", "err", err)
	}
}

func (s *Scheduler) etcdUp() {
	s.mu.Lock()
	was := s.outage
	s.etcd, s.outage, s.probed = nil, false, true
	s.mu.Unlock()
	s.o.Metrics.setEtcdUp(true)
	if was {
		s.log.Info("etcd answers again: jobs may start")
	}
}

// errNotProbed is the health of a scheduler whose first etcd probe has
// not answered yet.
var errNotProbed = errors.New("not asked yet (starting)")

// Healthy is nil when the last etcd request succeeded.
func (s *Scheduler) Healthy() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.probed {
		return errNotProbed
	}
	return s.etcd
}

// HealthHandler answers 200 "ok" while etcd answers, else 503 with the cause.
func (s *Scheduler) HealthHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if err := s.Healthy(); err != nil {
			http.Error(w, "etcd: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
}

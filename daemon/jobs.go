package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/pgkeep/pgkeep/archive"
	"github.com/pgkeep/pgkeep/drill"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/scheduler"
)

// kind is what the daemon knows of a job kind: how its settings are
// checked, how it runs, and how its result is found in the repository.
type kind struct {
	name scheduler.JobKind
	// check validates the kind-specific settings of a job (config load).
	check func(JobSettings) error
	run   func(d *runner, ctx context.Context, job Job, scheduled time.Time) (scheduler.Result, error)
	// find reports the result the repository holds for a scheduled time;
	// nil for kinds that leave no trace there (they run again).
	find func(d *runner, ctx context.Context, job Job, scheduled time.Time) (scheduler.Result, bool, error)
}

// kinds is the one table of job kinds: a new kind (e.g. drill) is one
// entry here (its scheduler.JobKind constant beside the others).
var kinds = []kind{
	{name: scheduler.JobBackup, check: checkBackup, run: (*runner).backup, find: (*runner).findBackup},
	{name: scheduler.JobRetention, check: onlyBackupType(checkRetention), run: (*runner).retention},
	{name: scheduler.JobVerify, check: onlyBackupType(noRetention), run: (*runner).verify},
	{name: scheduler.JobDrill, check: onlyBackupType(noRetention), run: (*runner).drill},
}

// JobSettings are the kind-specific keys of a daemon.jobs entry; each
// kind's check refuses what it must not be given (checkpoint is ignored
// by the kinds that take no backup, as it always was).
type JobSettings struct {
	// RetainFull / RetainDays: retention jobs, exactly one of them.
	RetainFull, RetainDays int
	// SpreadCheckpoint asks backup jobs for a spread checkpoint (default
	// fast).
	SpreadCheckpoint bool
	// Drill is what drill jobs run (daemon/drill.go, docs/drill.md).
	Drill drill.Options
	// BackupType is a backup job's --type: full, incr or checksum ("" =
	// incr once a backup exists), so a schedule can be "checksum weekly,
	// incr daily".
	BackupType string
}

func checkBackup(s JobSettings) error {
	if err := archive.ValidType(s.BackupType); err != nil {
		return err
	}
	return noRetention(s)
}

// onlyBackupType refuses a type on jobs that take no backup.
func onlyBackupType(check func(JobSettings) error) func(JobSettings) error {
	return func(s JobSettings) error {
		if s.BackupType != "" {
			return errors.New("type is for backup jobs")
		}
		return check(s)
	}
}

func kindOf(k scheduler.JobKind) (kind, bool) {
	for _, c := range kinds {
		if c.name == k {
			return c, true
		}
	}
	return kind{}, false
}

func errUnknownKind(k scheduler.JobKind) error {
	names := make([]string, len(kinds))
	for i, c := range kinds {
		names[i] = string(c.name)
	}
	list := strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
	return fmt.Errorf("%q is not %s", string(k), list)
}

// ParseJobKind is the kind a daemon.jobs entry names, or an error listing
// the kinds there are.
func ParseJobKind(s string) (scheduler.JobKind, error) {
	if _, ok := kindOf(scheduler.JobKind(s)); !ok {
		return "", errUnknownKind(scheduler.JobKind(s))
	}
	return scheduler.JobKind(s), nil
}

// CheckJob validates the kind-specific settings of a job of kind k.
func CheckJob(k scheduler.JobKind, s JobSettings) error {
	c, ok := kindOf(k)
	if !ok {
		return errUnknownKind(k)
	}
	return c.check(s)
}

func noRetention(s JobSettings) error {
	if s.RetainFull != 0 || s.RetainDays != 0 {
		return errors.New("retain_full and retain_days are for retention jobs")
	}
	return nil
}

func checkRetention(s JobSettings) error {
	if s.RetainFull < 0 || s.RetainDays < 0 || (s.RetainFull > 0) == (s.RetainDays > 0) {
		return errors.New("retention needs exactly one of retain_full or retain_days (>= 1)")
	}
	return nil
}

// runner runs the daemon's jobs against the repository and the local
// PostgreSQL (scheduler.Runner).
type runner struct {
	o    Options
	r    *repo.Repository
	log  *slog.Logger
	jobs map[string]Job
	info *repoInfo
}

func (d *runner) Run(ctx context.Context, job scheduler.Job, scheduled time.Time) (scheduler.Result, error) {
	c, ok := kindOf(job.Kind)
	if !ok {
		return scheduler.Result{}, errUnknownKind(job.Kind)
	}
	// The repository changed (or a job found it wanting): the repository
	// metrics are computed again, at most once per refresh spacing.
	defer d.info.refreshSoon()
	return c.run(d, ctx, d.job(job), scheduled)
}

// Find looks in the repository for the result of a scheduled time, for
// the kinds that leave one there (see scheduler.Runner).
func (d *runner) Find(ctx context.Context, job scheduler.Job, scheduled time.Time) (scheduler.Result, bool, error) {
	c, ok := kindOf(job.Kind)
	if !ok || c.find == nil {
		return scheduler.Result{}, false, nil
	}
	return c.find(d, ctx, d.job(job), scheduled)
}

// job is the daemon's Job for the scheduler's (with the kind's settings).
func (d *runner) job(j scheduler.Job) Job {
	if dj, ok := d.jobs[j.Name]; ok {
		dj.Job = j
		return dj
	}
	return Job{Job: j}
}

func (d *runner) backup(ctx context.Context, job Job, scheduled time.Time) (scheduler.Result, error) {
	b := d.o.Backup
	defer d.info.active.Store(false) // also when the backup ends without Finish
	m, err := archive.Backup(ctx, d.r, archive.BackupOptions{
		Schedule:       &repo.Schedule{Job: job.Name, Time: scheduled.UTC()},
		DSN:            b.DSN,
		PGData:         b.PGData,
		FastCheckpoint: !job.SpreadCheckpoint,
		Type:           job.BackupType,
		Workers:        b.Workers,
		Writers:        b.Writers,
		WALTimeout:     b.WALTimeout,
		Progress:       d.info.progress(),
		Logger:         d.log.With("job", job.Name),
	})
	if errors.Is(err, repo.ErrScheduleTaken) {
		return scheduler.Result{}, fmt.Errorf("%w: %w", scheduler.ErrAlreadyDone, err)
	}
	if err != nil {
		return scheduler.Result{}, err
	}
	return scheduler.Result{BackupID: m.ID, Bytes: m.DataSize}, nil
}

// findBackup looks in the repository for the backup committed for a
// backup job's scheduled time (the summary carries job and time, and the
// repository's claim lets only one backup commit per time).
func (d *runner) findBackup(ctx context.Context, job Job, scheduled time.Time) (scheduler.Result, bool, error) {
	s, found, err := d.r.FindScheduled(ctx, repo.Schedule{Job: job.Name, Time: scheduled.UTC()})
	if err != nil || !found {
		return scheduler.Result{}, false, err
	}
	return scheduler.Result{BackupID: s.ID, Bytes: s.DataSize, Started: s.StartTime, Finished: s.StopTime}, true, nil
}

func (d *runner) retention(ctx context.Context, job Job, _ time.Time) (scheduler.Result, error) {
	plan, err := d.r.PlanRetention(ctx, repo.RetentionOptions{
		RetainFull: job.RetainFull, RetainDays: job.RetainDays,
		DebrisMinAge: time.Hour, Now: time.Now(),
	})
	if err != nil {
		return scheduler.Result{}, err
	}
	if err := d.r.ApplyRetention(ctx, plan); err != nil {
		return scheduler.Result{}, err
	}
	d.log.Info("retention applied", "job", job.Name, "backups_deleted", len(plan.Backups), "debris_deleted", len(plan.Debris), "wal_deleted", len(plan.WAL))
	return scheduler.Result{}, nil
}

func (d *runner) verify(ctx context.Context, job Job, _ time.Time) (scheduler.Result, error) {
	backups, _, err := d.r.ListBackups(ctx)
	if err != nil {
		return scheduler.Result{}, err
	}
	if len(backups) == 0 {
		return scheduler.Result{}, errors.New("verify: the repository has no backup")
	}
	b := backups[len(backups)-1]
	var cache *repo.VerifyCache
	if d.o.VerifyCache != nil {
		cache = d.o.VerifyCache(d.r)
	}
	rep, err := d.r.Verify(ctx, repo.VerifyOptions{
		BackupIDs:   []string{b.ID},
		Cache:       cache,
		Concurrency: d.o.VerifyConcurrency,
		Logger:      d.log,
	})
	if err != nil {
		return scheduler.Result{BackupID: b.ID}, fmt.Errorf("verify %s: %w", b.ID, err)
	}
	if probs := rep.Problems; len(probs) > 0 {
		return scheduler.Result{BackupID: b.ID}, fmt.Errorf("verify %s: %d problems, first: %s", b.ID, len(probs), probs[0])
	}
	d.log.Info("verified", "job", job.Name, "backup", b.ID, "wal_objects", rep.WAL.Objects, "wal_read", rep.WAL.Read, "wal_from_cache", rep.WAL.Cached)
	return scheduler.Result{BackupID: b.ID, Bytes: b.StoredSize}, nil
}

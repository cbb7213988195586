package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/pgkeep/pgkeep/archive"
	"github.com/pgkeep/pgkeep/ha"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/scheduler"
)

func newDaemonCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "daemon",
		Short: "Run scheduled backups, retention and verify on the right node of the Patroni cluster",
		Long: `daemon runs the jobs of daemon.jobs on their cron schedules. Run it on every node of
the Patroni cluster: from the cluster as Patroni writes it in etcd, every daemon
picks the same member for each job (run_on: primary, replica or prefer-replica;
members tagged nobackup never run jobs), that member takes an etcd lock for the
job's scheduled time and runs it, and the result is recorded in etcd once. When
the chosen node dies mid-run another eligible node takes over after
daemon.lock_ttl + daemon.takeover_timeout. While etcd cannot be reached no job
starts.

With daemon.ha: none (one PostgreSQL without Patroni) there is no etcd: the
same jobs run on this host, a flock per job and scheduled time in
daemon.lock_dir lets one of the daemons sharing that directory run each
scheduled time, and the run records are JSON files there.

Prometheus metrics are served on daemon.listen (/metrics), with /healthz.
SIGTERM or SIGINT aborts a running job cleanly and releases its lock.
See docs/daemon.md.`,
		Example: "  pgkeep daemon --config /etc/pgkeep/pgkeep.yml",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.load(); err != nil {
				return err
			}
			return runDaemon(cmd.Context(), a)
		},
	}
}

// daemonScheduler is the etcd scheduler or the local one (daemon.ha: none).
type daemonScheduler interface {
	Run(ctx context.Context) error
	HealthHandler() http.Handler
}

func runDaemon(ctx context.Context, a *app) error {
	cfg, d := a.cfg, a.cfg.Daemon
	standalone := d.HA == "none"
	if !standalone && len(cfg.Etcd.Endpoints) == 0 {
		return &configError{"daemon: etcd.endpoints and patroni.scope are required (or daemon.ha: none for a PostgreSQL without Patroni)"}
	}
	if len(d.Jobs) == 0 {
		return &configError{"daemon: daemon.jobs is empty: nothing to schedule"}
	}
	member := d.Member
	if member == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("daemon.member is empty and the host name is unknown: %w", err)
		}
		member = h
	}
	var h *ha.Client
	if !standalone {
		var err error
		if h, err = openHA(ctx, cfg, a.log); err != nil {
			return err
		}
		defer h.Close()
	}
	r, err := openRepo(ctx, cfg)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var metrics *scheduler.Metrics
	if standalone {
		metrics = scheduler.NewStandaloneMetrics(reg)
	} else {
		metrics = scheduler.NewMetrics(reg)
	}
	runner := &daemonRunner{cfg: cfg, r: r, log: a.log, jobs: map[string]DaemonJob{}}
	var jobs []scheduler.Job
	for _, j := range d.Jobs {
		maxLag := j.MaxLag
		if maxLag == "" {
			maxLag = DefaultMaxLag
		}
		lag, _ := parseBytes(maxLag) // validated
		jobs = append(jobs, scheduler.Job{Name: j.Name, Kind: j.Kind, Schedule: jobSchedule(d, j),
			RunOn: scheduler.Policy(j.RunOn), MaxLag: lag, Window: j.Window,
			RetainFull: j.RetainFull, RetainDays: j.RetainDays})
		runner.jobs[j.Name] = j
	}
	// A skewed clock, for the end-to-end tests of clock skew only: the
	// scheduler's idea of this machine's time is moved by it.
	clock := time.Now
	if v := os.Getenv("PGKEEP_TEST_CLOCK_OFFSET"); v != "" {
		off, err := time.ParseDuration(v)
		if err != nil || off < -time.Hour || off > time.Hour {
			return &configError{"PGKEEP_TEST_CLOCK_OFFSET: not a duration within ±1h"}
		}
		a.log.Warn("PGKEEP_TEST_CLOCK_OFFSET is set: the daemon's clock is skewed on purpose (tests only)", "offset", off)
		clock = func() time.Time { return time.Now().Add(off) }
	}
	var sched daemonScheduler
	if standalone {
		sched, err = scheduler.NewLocal(scheduler.LocalOptions{
			Dir: d.LockDir, Member: member, Jobs: jobs, Runner: runner, Clock: clock,
			PollInterval: d.PollInterval, Retries: d.Retries, RetryDelay: d.RetryDelay,
			Metrics: metrics, Logger: a.log,
		})
	} else {
		sched, err = scheduler.New(scheduler.Options{
			HA: h, Member: member, Jobs: jobs, Runner: runner, Clock: clock,
			LockTTL: d.LockTTL, TakeoverTimeout: d.TakeoverTimeout, TakeoverStagger: d.TakeoverStagger, PollInterval: d.PollInterval,
			Retries: d.Retries, RetryDelay: d.RetryDelay, Metrics: metrics, Logger: a.log,
		})
	}
	if err != nil {
		return &configError{err.Error()}
	}
	var srv *http.Server
	if d.Listen != "" {
		ln, err := net.Listen("tcp", d.Listen)
		if err != nil {
			return fmt.Errorf("daemon.listen: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.Handle("/healthz", sched.HealthHandler())
		srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Error("metrics server stopped", "err", err)
			}
		}()
		a.log.Info("serving metrics", "address", ln.Addr().String())
	}
	go archiveMetrics(ctx, cfg, metrics, d.ArchiveCheckInterval)
	if standalone {
		a.log.Info("daemon starting without Patroni (daemon.ha: none)", "member", member, "lock_dir", d.LockDir, "jobs", len(jobs))
	} else {
		a.log.Info("daemon starting", "member", member, "scope", cfg.Patroni.Scope, "jobs", len(jobs))
	}
	err = sched.Run(ctx)
	if srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		srv.Shutdown(sctx)
		cancel()
	}
	return err
}

// archiveMetrics refreshes the archive metrics from pg_stat_archiver until
// ctx ends. The lag is the age of the last archived segment; unknown (-1)
// on a standby that does not archive, or when PostgreSQL is unreachable.
func archiveMetrics(ctx context.Context, cfg Config, m *scheduler.Metrics, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		lag, failed := -1.0, int64(-1)
		if rep := postgresStatus(ctx, cfg); rep.archiverReport != nil {
			ar := rep.archiverReport
			failed = ar.FailedCount
			archiving := !ar.InRecovery || ar.ArchiveMode == "always"
			if archiving && ar.LastArchivedTime != nil {
				lag = time.Since(*ar.LastArchivedTime).Seconds()
			}
		}
		m.SetArchive(lag, failed)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// daemonRunner runs the daemon's jobs against the repository and the local
// PostgreSQL.
type daemonRunner struct {
	cfg  Config
	r    *repo.Repository
	log  *slog.Logger
	jobs map[string]DaemonJob
}

func (d *daemonRunner) Run(ctx context.Context, job scheduler.Job, scheduled time.Time) (scheduler.Result, error) {
	switch job.Kind {
	case "backup":
		m, err := archive.Backup(ctx, d.r, archive.BackupOptions{
			Schedule:       &repo.Schedule{Job: job.Name, Time: scheduled.UTC()},
			DSN:            d.cfg.Postgres.DSN,
			PGData:         d.cfg.PGData,
			FastCheckpoint: d.jobs[job.Name].Checkpoint != "spread",
			Workers:        runtime.NumCPU(),
			Writers:        d.cfg.UploadConcurrency,
			WALTimeout:     5 * time.Minute,
			Logger:         d.log.With("job", job.Name),
		})
		if errors.Is(err, repo.ErrScheduleTaken) {
			return scheduler.Result{}, fmt.Errorf("%w: %w", scheduler.ErrAlreadyDone, err)
		}
		if err != nil {
			return scheduler.Result{}, err
		}
		return scheduler.Result{BackupID: m.ID, Bytes: m.DataSize}, nil
	case "retention":
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
	case "verify":
		backups, _, err := d.r.ListBackups(ctx)
		if err != nil {
			return scheduler.Result{}, err
		}
		if len(backups) == 0 {
			return scheduler.Result{}, errors.New("verify: the repository has no backup")
		}
		b := backups[len(backups)-1]
		rep, err := d.r.Verify(ctx, repo.VerifyOptions{
			BackupIDs:   []string{b.ID},
			Cache:       openVerifyCache(d.cfg, d.log, d.r),
			Concurrency: d.cfg.DownloadConcurrency,
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
	return scheduler.Result{}, fmt.Errorf("unknown job kind %q", job.Kind)
}

// Find looks in the repository for the backup committed for a backup
// job's scheduled time (the summary carries job and time, and the
// repository's claim lets only one backup commit per time). Retention and
// verify leave no such trace: they are found never, and run again.
func (d *daemonRunner) Find(ctx context.Context, job scheduler.Job, scheduled time.Time) (scheduler.Result, bool, error) {
	if job.Kind != "backup" {
		return scheduler.Result{}, false, nil
	}
	s, found, err := d.r.FindScheduled(ctx, repo.Schedule{Job: job.Name, Time: scheduled.UTC()})
	if err != nil || !found {
		return scheduler.Result{}, false, err
	}
	return scheduler.Result{BackupID: s.ID, Bytes: s.DataSize, Started: s.StartTime, Finished: s.StopTime}, true, nil
}

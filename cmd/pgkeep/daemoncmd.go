package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgkeep/pgkeep/daemon"
	"github.com/pgkeep/pgkeep/maintain"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/scheduler"
	"github.com/pgkeep/pgkeep/status"
	"github.com/pgkeep/pgkeep/storage"
)

func newDaemonCmd(a *app) *cobra.Command {
	return withConfig(&cobra.Command{
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
			return runDaemon(cmd.Context(), a)
		},
	})
}

// runDaemon turns the configuration into daemon.Options and runs it.
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
	var jobs []daemon.Job
	for _, j := range d.Jobs {
		maxLag := j.MaxLag
		if maxLag == "" {
			maxLag = DefaultMaxLag
		}
		lag, _ := parseBytes(maxLag) // validated
		dj := daemon.Job{Job: scheduler.Job{Name: j.Name, Kind: scheduler.JobKind(j.Kind), Schedule: jobSchedule(d, j),
			RunOn: scheduler.Policy(j.RunOn), MaxLag: lag, Window: j.Window},
			JobSettings: daemon.JobSettings{RetainFull: j.RetainFull, RetainDays: j.RetainDays, SpreadCheckpoint: j.Checkpoint == "spread", BackupType: j.Type}}
		if dj.Kind == scheduler.JobDrill {
			dj.Drill, _ = drillJobOptions(j) // validated
			a.drillDefaults(&dj.Drill)
		}
		jobs = append(jobs, dj)
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
	o := daemon.Options{
		Member: member, Scope: cfg.Patroni.Scope, LockDir: d.LockDir, Jobs: jobs, Clock: clock,
		LockTTL: d.LockTTL, TakeoverTimeout: d.TakeoverTimeout, TakeoverStagger: d.TakeoverStagger, PollInterval: d.PollInterval,
		Retries: d.Retries, RetryDelay: d.RetryDelay,
		Listen: d.Listen,
		OpenRepository: func(ctx context.Context, wrap func(storage.Backend) storage.Backend) (*repo.Repository, error) {
			return openRepoWrapped(ctx, cfg, cfg.Compression.Level, wrap)
		},
		Postgres:             func(ctx context.Context) (daemon.Archiver, error) { return archiverState(ctx, cfg) },
		ArchiveCheckInterval: d.ArchiveCheckInterval,
		Backup: daemon.BackupSettings{DSN: cfg.Postgres.DSN, PGData: cfg.PGData,
			Workers: backupWorkers(cfg), Writers: cfg.UploadConcurrency},
		VerifyConcurrency: cfg.DownloadConcurrency,
		VerifyCache: func(r *repo.Repository) *repo.VerifyCache {
			return maintain.OpenVerifyCache(cfg.Verify.CacheDir, a.log, r)
		},
		Build:  daemon.BuildInfo{Version: version, Revision: buildCommit(), GoVersion: runtime.Version()},
		Logger: a.log,
	}
	if !standalone {
		h, err := openHA(ctx, cfg, a.log)
		if err != nil {
			return err
		}
		defer h.Close()
		o.HA = h
	}
	err := daemon.Run(ctx, o)
	if ce := (*daemon.ConfigError)(nil); errors.As(err, &ce) {
		return &configError{ce.Msg}
	}
	return err
}

// errPostgresUnread is the daemon's pgkeep_postgres_up 0; `pgkeep status`
// says why.
var errPostgresUnread = errors.New("the local PostgreSQL could not be read")

// archiverState is pg_stat_archiver of the local PostgreSQL, for the
// daemon's archive metrics.
func archiverState(ctx context.Context, cfg Config) (daemon.Archiver, error) {
	ar := status.LocalPostgres(ctx, cfg.Postgres.DSN).ArchiverStatus
	if ar == nil {
		return daemon.Archiver{}, errPostgresUnread
	}
	return daemon.Archiver{InRecovery: ar.InRecovery, ArchiveMode: ar.ArchiveMode,
		ArchivedCount: ar.ArchivedCount, LastArchivedTime: ar.LastArchivedTime,
		FailedCount: ar.FailedCount, LastFailedTime: ar.LastFailedTime}, nil
}

// Package daemon is `pgkeep daemon` as a library: the scheduler (etcd or
// local locks) running the job bodies (backup, retention, verify) against
// the repository and the local PostgreSQL, the archive and repository
// metrics, and the /metrics and /healthz server. cmd/pgkeep only turns the
// configuration into Options and calls Run (the way etcd's embed package
// is etcd without its command line).
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/pgkeep/pgkeep/ha"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/scheduler"
	"github.com/pgkeep/pgkeep/storage"
)

// Options configure a daemon. Everything is given; the package reads no
// file, flag or environment variable.
type Options struct {
	// Member names this daemon (the Patroni member name, or the host name).
	Member string
	// HA is the Patroni cluster in etcd; nil means daemon.ha: none (one
	// PostgreSQL, local locks in LockDir).
	HA      *ha.Client
	Scope   string // for the start-up log line
	LockDir string
	Jobs    []Job
	// Scheduler timing (zero: the scheduler's defaults).
	LockTTL, TakeoverTimeout, TakeoverStagger, PollInterval time.Duration
	Retries                                                 int
	RetryDelay                                              time.Duration
	// Clock is this machine's clock (default time.Now); tests skew it.
	Clock func() time.Time

	// Listen is the address of /metrics and /healthz; empty serves none.
	Listen string
	// OpenRepository opens the repository with its storage backend
	// wrapped by wrap (the daemon counts storage requests that way).
	OpenRepository func(ctx context.Context, wrap func(storage.Backend) storage.Backend) (*repo.Repository, error)
	// Postgres answers pg_stat_archiver for the archive metrics and
	// pgkeep_postgres_up; an error means PostgreSQL could not be read.
	Postgres func(ctx context.Context) (Archiver, error)
	// ArchiveCheckInterval is how often Postgres is asked (default 30s).
	ArchiveCheckInterval time.Duration
	// RepoInfoInterval is how often the repository metrics are computed
	// (repo.Info: one listing of wal/ and of backups/, the summaries), at
	// most; they are also computed after each job (default 5m).
	RepoInfoInterval time.Duration

	// Backup settings of backup jobs.
	Backup BackupSettings
	// VerifyConcurrency is verify's download concurrency.
	VerifyConcurrency int
	// VerifyCache opens verify's WAL cache for the repository (nil, or a
	// nil answer: every WAL object is read).
	VerifyCache func(*repo.Repository) *repo.VerifyCache

	// Build is exported as pgkeep_build_info.
	Build BuildInfo
	// Registry receives the metrics (nil: a new one, with the Go and
	// process collectors).
	Registry *prometheus.Registry
	Logger   *slog.Logger
}

// Job is one entry of daemon.jobs: what the scheduler needs, and the
// settings of its kind.
type Job struct {
	scheduler.Job
	JobSettings
}

// BackupSettings are what backup jobs pass to archive.Backup.
type BackupSettings struct {
	DSN, PGData string
	// Workers read and compress blocks; Writers upload packs.
	Workers, Writers int
	// WALTimeout bounds the wait for a backup's last WAL (default 5m).
	WALTimeout time.Duration
}

// BuildInfo is the binary's version.
type BuildInfo struct {
	Version, Revision, GoVersion string
}

// ConfigError is an error in Options (exit 2 in cmd/pgkeep).
type ConfigError struct{ Msg string }

func (e *ConfigError) Error() string { return e.Msg }

// Run runs the daemon until ctx is done, then stops running jobs
// (releasing their locks) and the HTTP server, and returns nil; an error
// only when it could not start.
func Run(ctx context.Context, o Options) error {
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if len(o.Jobs) == 0 {
		return &ConfigError{"daemon: daemon.jobs is empty: nothing to schedule"}
	}
	if o.OpenRepository == nil {
		return errors.New("daemon: no repository")
	}
	for _, j := range o.Jobs {
		if _, ok := kindOf(j.Kind); !ok {
			return &ConfigError{fmt.Sprintf("daemon: job %s: %v", j.Name, errUnknownKind(j.Kind))}
		}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.ArchiveCheckInterval, 30*time.Second)
	def(&o.RepoInfoInterval, 5*time.Minute)
	def(&o.Backup.WALTimeout, 5*time.Minute)
	reg := o.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	standalone := o.HA == nil
	m := newMetrics(reg, o.Build)
	r, err := o.OpenRepository(ctx, m.storage.wrap)
	if err != nil {
		return err
	}
	var jm *scheduler.Metrics
	if standalone {
		jm = scheduler.NewStandaloneMetrics(reg)
	} else {
		jm = scheduler.NewMetrics(reg)
	}
	info := newRepoInfo(r, o.RepoInfoInterval, o.Logger)
	reg.MustRegister(info)
	ru := &runner{o: o, r: r, log: o.Logger, jobs: map[string]Job{}, info: info}
	var jobs []scheduler.Job
	for _, j := range o.Jobs {
		jobs = append(jobs, j.Job)
		ru.jobs[j.Name] = j
	}
	var sched interface {
		Run(ctx context.Context) error
		HealthHandler() http.Handler
	}
	if standalone {
		sched, err = scheduler.NewLocal(scheduler.LocalOptions{
			Dir: o.LockDir, Member: o.Member, Jobs: jobs, Runner: ru, Clock: o.Clock,
			PollInterval: o.PollInterval, Retries: o.Retries, RetryDelay: o.RetryDelay,
			Metrics: jm, Logger: o.Logger,
		})
	} else {
		sched, err = scheduler.New(scheduler.Options{
			HA: o.HA, Member: o.Member, Jobs: jobs, Runner: ru, Clock: o.Clock,
			LockTTL: o.LockTTL, TakeoverTimeout: o.TakeoverTimeout, TakeoverStagger: o.TakeoverStagger, PollInterval: o.PollInterval,
			Retries: o.Retries, RetryDelay: o.RetryDelay, Metrics: jm, Logger: o.Logger,
		})
	}
	if err != nil {
		return &ConfigError{err.Error()}
	}
	stop, err := serve(o.Listen, reg, sched.HealthHandler(), o.Logger)
	if err != nil {
		return err
	}
	defer stop()

	bg, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{}, 2)
	go func() { watchArchiver(bg, o.Postgres, m, o.ArchiveCheckInterval); done <- struct{}{} }()
	go func() { info.run(bg); done <- struct{}{} }()
	if standalone {
		o.Logger.Info("daemon starting without Patroni (daemon.ha: none)", "member", o.Member, "lock_dir", o.LockDir, "jobs", len(jobs))
	} else {
		o.Logger.Info("daemon starting", "member", o.Member, "scope", o.Scope, "jobs", len(jobs))
	}
	err = sched.Run(ctx)
	cancel()
	<-done
	<-done
	return err
}

// serve starts the metrics and health server on addr ("" none); stop
// shuts it down.
func serve(addr string, reg *prometheus.Registry, health http.Handler, log *slog.Logger) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("daemon.listen: %w", err)
	}
	srv := &http.Server{Handler: Handler(reg, health), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.Info("serving metrics", "address", ln.Addr().String())
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}, nil
}

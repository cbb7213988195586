package daemon

import (
	"context"
	"net/http"
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metric names (docs/daemon.md has the table), beside the job metrics of
// package scheduler. Unknown values are absent series, never a sentinel.
const (
	MetricBuildInfo                = "pgkeep_build_info"
	MetricPostgresUp               = "pgkeep_postgres_up"
	MetricArchiveLastArchived      = "pgkeep_archive_last_archived_timestamp_seconds"
	MetricArchiveLastFailed        = "pgkeep_archive_last_failed_timestamp_seconds"
	MetricArchiveArchived          = "pgkeep_archive_archived_total"
	MetricArchiveFailed            = "pgkeep_archive_failed_total"
	MetricStorageRequests          = "pgkeep_storage_requests_total"
	MetricStorageErrors            = "pgkeep_storage_request_errors_total"
	MetricRepoNewestBackup         = "pgkeep_repo_newest_backup_timestamp_seconds"
	MetricRepoOldestBackup         = "pgkeep_repo_oldest_backup_timestamp_seconds"
	MetricRepoNewestBackupBytes    = "pgkeep_repo_newest_backup_database_bytes"
	MetricRepoNewestBackupStored   = "pgkeep_repo_newest_backup_stored_bytes"
	MetricRepoRecoveryWindowStart  = "pgkeep_repo_recovery_window_start_timestamp_seconds"
	MetricRepoRecoveryWindowEnd    = "pgkeep_repo_recovery_window_end_timestamp_seconds"
	MetricRepoNewestWAL            = "pgkeep_repo_wal_newest_archived_timestamp_seconds"
	MetricRepoWALGaps              = "pgkeep_repo_wal_gaps"
	MetricRepoSize                 = "pgkeep_repo_size_bytes"
	MetricRepoBackups              = "pgkeep_repo_backups"
	MetricRunningBackupDone        = "pgkeep_running_backup_done_bytes"
	MetricRunningBackupTotal       = "pgkeep_running_backup_total_bytes"
	MetricRepoInfoRefreshed        = "pgkeep_repo_info_last_refresh_timestamp_seconds"
	MetricRepoInfoRefreshDuration  = "pgkeep_repo_info_refresh_duration_seconds"
	MetricRepoInfoRefreshErrors    = "pgkeep_repo_info_refresh_errors_total"
	MetricRepoInfoLastRefreshError = "pgkeep_repo_info_last_error_timestamp_seconds"
)

// MetricNames are the names above, for tests of dashboards and alerts.
func MetricNames() []string {
	return []string{MetricBuildInfo, MetricPostgresUp, MetricArchiveLastArchived, MetricArchiveLastFailed, MetricArchiveArchived,
		MetricArchiveFailed, MetricStorageRequests, MetricStorageErrors, MetricRepoNewestBackup, MetricRepoOldestBackup,
		MetricRepoNewestBackupBytes, MetricRepoNewestBackupStored, MetricRepoRecoveryWindowStart, MetricRepoRecoveryWindowEnd,
		MetricRepoNewestWAL, MetricRepoWALGaps, MetricRepoSize, MetricRepoBackups, MetricRunningBackupDone, MetricRunningBackupTotal,
		MetricRepoInfoRefreshed, MetricRepoInfoRefreshDuration, MetricRepoInfoRefreshErrors, MetricRepoInfoLastRefreshError}
}

// metrics are the daemon's own metrics (not the jobs').
type metrics struct {
	archiver *archiverCollector
	storage  *storageCounters
}

func newMetrics(reg prometheus.Registerer, b BuildInfo) *metrics {
	if b.GoVersion == "" {
		b.GoVersion = runtime.Version()
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricBuildInfo,
		Help: "Always 1; the labels say which pgkeep runs."}, []string{"version", "revision", "goversion"})
	build.WithLabelValues(b.Version, b.Revision, b.GoVersion).Set(1)
	m := &metrics{archiver: &archiverCollector{}, storage: newStorageCounters()}
	reg.MustRegister(build, m.archiver, m.storage.requests, m.storage.errors)
	return m
}

// Handler serves /metrics from reg and /healthz from health.
func Handler(reg *prometheus.Registry, health http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/healthz", health)
	return mux
}

// Archiver is what pg_stat_archiver says, with whether the server
// archives at all (a standby archives only with archive_mode = always).
type Archiver struct {
	InRecovery       bool
	ArchiveMode      string
	ArchivedCount    int64
	LastArchivedTime *time.Time
	FailedCount      int64
	LastFailedTime   *time.Time
}

// Archiving says whether this server's archiver is the one that pushes
// WAL (a primary, or a standby with archive_mode = always).
func (a Archiver) Archiving() bool { return !a.InRecovery || a.ArchiveMode == "always" }

var (
	descPostgresUp = prometheus.NewDesc(MetricPostgresUp,
		"1 when the local PostgreSQL answered the last pg_stat_archiver query (every archive_check_interval), else 0.", nil, nil)
	descLastArchived = prometheus.NewDesc(MetricArchiveLastArchived,
		"Unix time of the local PostgreSQL's last successful archive_command (pg_stat_archiver.last_archived_time); absent when unknown: PostgreSQL down, nothing archived since its statistics were reset, or a standby that does not archive.", nil, nil)
	descLastFailed = prometheus.NewDesc(MetricArchiveLastFailed,
		"Unix time of the local PostgreSQL's last failed archive_command (pg_stat_archiver.last_failed_time); absent when none or unknown.", nil, nil)
	descArchived = prometheus.NewDesc(MetricArchiveArchived,
		"WAL files the local PostgreSQL archived (pg_stat_archiver.archived_count; resets with PostgreSQL's statistics); absent when PostgreSQL is down.", nil, nil)
	descFailed = prometheus.NewDesc(MetricArchiveFailed,
		"Failed archive_command runs of the local PostgreSQL (pg_stat_archiver.failed_count; resets with PostgreSQL's statistics); absent when PostgreSQL is down.", nil, nil)
)

// archiverCollector exports the last pg_stat_archiver answer.
type archiverCollector struct {
	mu     sync.Mutex
	probed bool // a probe answered or failed
	up     bool
	a      Archiver
}

func (c *archiverCollector) set(a Archiver, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.probed, c.up, c.a = true, err == nil, a
}

func (c *archiverCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPostgresUp, descLastArchived, descLastFailed, descArchived, descFailed} {
		ch <- d
	}
}

func (c *archiverCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.probed {
		return
	}
	up := 0.0
	if c.up {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(descPostgresUp, prometheus.GaugeValue, up)
	if !c.up {
		return
	}
	a := c.a
	ch <- prometheus.MustNewConstMetric(descArchived, prometheus.CounterValue, float64(a.ArchivedCount))
	ch <- prometheus.MustNewConstMetric(descFailed, prometheus.CounterValue, float64(a.FailedCount))
	if a.LastFailedTime != nil {
		ch <- prometheus.MustNewConstMetric(descLastFailed, prometheus.GaugeValue, unixSeconds(*a.LastFailedTime))
	}
	if a.Archiving() && a.LastArchivedTime != nil {
		ch <- prometheus.MustNewConstMetric(descLastArchived, prometheus.GaugeValue, unixSeconds(*a.LastArchivedTime))
	}
}

func unixSeconds(t time.Time) float64 { return float64(t.UnixMilli()) / 1000 }

// watchArchiver asks PostgreSQL every interval until ctx ends.
func watchArchiver(ctx context.Context, probe func(context.Context) (Archiver, error), m *metrics, every time.Duration) {
	if probe == nil {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		a, err := probe(ctx)
		if ctx.Err() != nil {
			return
		}
		m.archiver.set(a, err)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

package scheduler

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the daemon's Prometheus metrics. Last success times come
// from the run records in etcd, so every daemon of a cluster reports the
// cluster's last success; run counts, durations, bytes and lock state are
// this node's own.
type Metrics struct {
	mu            sync.Mutex
	last          map[string]float64
	lastSuccess   *prometheus.GaugeVec
	duration      *prometheus.HistogramVec
	bytes         *prometheus.GaugeVec
	runs          *prometheus.CounterVec
	held          *prometheus.GaugeVec
	etcdUp        prometheus.Gauge
	archiveLag    prometheus.Gauge
	archiveFailed prometheus.Gauge
	clockOffset   *prometheus.GaugeVec
}

// Metric names, for tests and alert rules. The job label is job_name:
// Prometheus reserves "job" for the scrape job.
const (
	MetricLastSuccess   = "pgkeep_job_last_success_timestamp_seconds"
	MetricDuration      = "pgkeep_job_duration_seconds"
	MetricBytes         = "pgkeep_job_last_bytes"
	MetricRuns          = "pgkeep_job_runs_total"
	MetricHeld          = "pgkeep_job_lock_held"
	MetricEtcdUp        = "pgkeep_etcd_up"
	MetricArchiveLag    = "pgkeep_archive_lag_seconds"
	MetricArchiveFailed = "pgkeep_archive_failed_count"
	MetricClockOffset   = "pgkeep_clock_offset_seconds"
)

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics { return newMetrics(reg, true) }

// NewStandaloneMetrics is NewMetrics for a daemon without Patroni (Local):
// without the etcd and clock metrics.
func NewStandaloneMetrics(reg prometheus.Registerer) *Metrics { return newMetrics(reg, false) }

func newMetrics(reg prometheus.Registerer, withEtcd bool) *Metrics {
	m := &Metrics{
		last: map[string]float64{},
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricLastSuccess,
			Help: "Unix time at which the last successful run of the job (on any node of the cluster) ended."}, []string{"job_name"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: MetricDuration,
			Help:    "Duration of the job's runs on this node.",
			Buckets: []float64{1, 10, 60, 300, 900, 1800, 3600, 7200, 14400, 28800}}, []string{"job_name"}),
		bytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricBytes,
			Help: "Bytes the job's last successful run on this node stored (backups: database size)."}, []string{"job_name"}),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricRuns,
			Help: "Runs of the job on this node by result (succeeded, failed, aborted, interrupted, unrecorded)."}, []string{"job_name", "result"}),
		held: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricHeld,
			Help: "1 while this node holds the job's lock (runs it), else 0."}, []string{"job_name"}),
		etcdUp: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricEtcdUp,
			Help: "1 when the last etcd request succeeded, else 0 (no job starts)."}),
		archiveLag: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricArchiveLag,
			Help: "Seconds since PostgreSQL last archived a WAL segment successfully (pg_stat_archiver), -1 when unknown."}),
		archiveFailed: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricArchiveFailed,
			Help: "PostgreSQL's failed archive attempts (pg_stat_archiver.failed_count), -1 when unknown."}),
	}
	m.clockOffset = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricClockOffset,
		Help: "Estimated offset of another daemon's clock from this node's (its minus ours), in seconds, from the clock records in etcd (error up to a poll interval)."}, []string{"member"})
	m.archiveLag.Set(-1)
	m.archiveFailed.Set(-1)
	reg.MustRegister(m.lastSuccess, m.duration, m.bytes, m.runs, m.held, m.archiveLag, m.archiveFailed)
	if withEtcd {
		reg.MustRegister(m.etcdUp, m.clockOffset)
	}
	return m
}

// SetArchive records pg_stat_archiver facts; negative means unknown.
func (m *Metrics) SetArchive(lagSeconds float64, failedCount int64) {
	if m == nil {
		return
	}
	m.archiveLag.Set(lagSeconds)
	m.archiveFailed.Set(float64(failedCount))
}

func (m *Metrics) initJob(job string) {
	if m == nil {
		return
	}
	m.held.WithLabelValues(job).Set(0)
	for _, r := range []string{StatusSucceeded, StatusFailed, StatusAborted, StatusInterrupted, StatusUnrecorded} {
		m.runs.WithLabelValues(job, r)
	}
}

func (m *Metrics) setHeld(job string, on bool) {
	if m == nil {
		return
	}
	v := 0.0
	if on {
		v = 1
	}
	m.held.WithLabelValues(job).Set(v)
}

func (m *Metrics) observe(r Run) {
	if m == nil {
		return
	}
	m.runs.WithLabelValues(r.Job, r.Status).Inc()
	m.duration.WithLabelValues(r.Job).Observe(r.DurationSeconds)
	if r.Status == StatusSucceeded {
		m.bytes.WithLabelValues(r.Job).Set(float64(r.Bytes))
	}
}

func (m *Metrics) success(r Run) {
	if m == nil || r.Status != StatusSucceeded {
		return
	}
	end := float64(r.Finished.UnixMilli()) / 1000
	m.mu.Lock()
	defer m.mu.Unlock()
	// Only forward: records are seen in any order.
	if end > m.last[r.Job] {
		m.last[r.Job] = end
		m.lastSuccess.WithLabelValues(r.Job).Set(end)
	}
}

func (m *Metrics) setEtcdUp(up bool) {
	if m == nil {
		return
	}
	if up {
		m.etcdUp.Set(1)
	} else {
		m.etcdUp.Set(0)
	}
}

func (m *Metrics) setClockOffset(member string, seconds float64) {
	if m == nil {
		return
	}
	m.clockOffset.WithLabelValues(member).Set(seconds)
}

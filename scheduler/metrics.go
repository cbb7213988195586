package scheduler

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the daemon's job metrics. Last success and failure times
// come from the run records (in etcd, or the lock directory), so every
// daemon of a cluster reports the cluster's; run counts, durations, bytes
// and lock state are this node's own. What the daemon knows beyond its
// jobs (repository, archiver, storage requests) is package daemon's.
type Metrics struct {
	mu          sync.Mutex
	last        map[string]float64
	lastFail    map[string]float64
	lastSuccess *prometheus.GaugeVec
	lastFailure *prometheus.GaugeVec
	duration    *prometheus.HistogramVec
	bytes       *prometheus.GaugeVec
	runs        *prometheus.CounterVec
	held        *prometheus.GaugeVec
	// etcdUp has no labels; a vector so that it can be absent until the
	// first probe answered.
	etcdUp      *prometheus.GaugeVec
	clockOffset *prometheus.GaugeVec
	// Drill jobs' last success and its restore-to-query time, from the
	// records like lastSuccess (docs/drill.md).
	drillLast    map[string]float64
	drillSuccess *prometheus.GaugeVec
	drillQuery   *prometheus.GaugeVec
}

// Metric names, for tests and alert rules. The job label is job_name:
// Prometheus reserves "job" for the scrape job.
const (
	MetricLastSuccess = "pgkeep_job_last_success_timestamp_seconds"
	MetricLastFailure = "pgkeep_job_last_failure_timestamp_seconds"
	MetricDuration    = "pgkeep_job_duration_seconds"
	MetricBytes       = "pgkeep_job_last_bytes"
	MetricRuns        = "pgkeep_job_runs_total"
	MetricHeld        = "pgkeep_job_lock_held"
	MetricEtcdUp      = "pgkeep_etcd_up"
	MetricClockOffset = "pgkeep_clock_offset_seconds"
	MetricDrillLast   = "pgkeep_drill_last_success_timestamp_seconds"
	MetricDrillQuery  = "pgkeep_drill_duration_seconds"
)

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics { return newMetrics(reg, true) }

// NewStandaloneMetrics is NewMetrics for a daemon without Patroni (Local):
// without the etcd and clock metrics.
func NewStandaloneMetrics(reg prometheus.Registerer) *Metrics { return newMetrics(reg, false) }

func newMetrics(reg prometheus.Registerer, withEtcd bool) *Metrics {
	m := &Metrics{
		last:     map[string]float64{},
		lastFail: map[string]float64{},
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricLastSuccess,
			Help: "Unix time at which the last successful run of the job (on any node of the cluster) ended; absent before the first."}, []string{"job_name"}),
		lastFailure: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricLastFailure,
			Help: "Unix time at which the last failed attempt of the job ended (final failures of any node from the records, this node's failed attempts); absent before the first."}, []string{"job_name"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: MetricDuration,
			Help:    "Duration of the job's runs on this node.",
			Buckets: []float64{1, 10, 60, 300, 900, 1800, 3600, 7200, 14400, 28800}}, []string{"job_name"}),
		bytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricBytes,
			Help: "Bytes the job's last successful run on this node stored (backups: database size)."}, []string{"job_name"}),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricRuns,
			Help: "Runs of the job on this node by result (succeeded, failed, aborted, interrupted, unrecorded)."}, []string{"job_name", "result"}),
		held: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricHeld,
			Help: "1 while this node holds the job's lock (runs it), else 0."}, []string{"job_name"}),
		etcdUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricEtcdUp,
			Help: "1 when the last etcd request (the probe every poll interval, or a job's) succeeded, else 0 (no job starts); absent until the first probe at start-up answered."}, nil),
	}
	m.clockOffset = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricClockOffset,
		Help: "Estimated offset of another daemon's clock from this node's (its minus ours), in seconds, from the clock records in etcd (error up to a poll interval)."}, []string{"member"})
	m.drillLast = map[string]float64{}
	m.drillSuccess = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricDrillLast,
		Help: "Unix time at which the last successful restore drill of the job (on any node of the cluster) ended; absent before the first."}, []string{"job_name"})
	m.drillQuery = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricDrillQuery,
		Help: "Restore-to-query time of the job's last successful drill: from the start of the restore to the first query the promoted copy answered."}, []string{"job_name"})
	reg.MustRegister(m.lastSuccess, m.lastFailure, m.duration, m.bytes, m.runs, m.held, m.drillSuccess, m.drillQuery)
	if withEtcd {
		reg.MustRegister(m.etcdUp, m.clockOffset)
	}
	return m
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
	switch r.Status {
	case StatusSucceeded:
		m.bytes.WithLabelValues(r.Job).Set(float64(r.Bytes))
	case StatusFailed:
		m.forward(m.lastFail, m.lastFailure, r)
	}
}

// recorded takes in a final record (written or read): the last success
// or the last failure of its job.
func (m *Metrics) recorded(r Run) {
	if m == nil {
		return
	}
	switch r.Status {
	case StatusSucceeded:
		m.forward(m.last, m.lastSuccess, r)
		if r.Kind == JobDrill {
			m.drill(r)
		}
	case StatusFailed:
		m.forward(m.lastFail, m.lastFailure, r)
	}
}

// forward sets g{job} to r's end if that is later than what it has:
// records are seen in any order.
func (m *Metrics) forward(seen map[string]float64, g *prometheus.GaugeVec, r Run) {
	end := float64(r.Finished.UnixMilli()) / 1000
	m.mu.Lock()
	defer m.mu.Unlock()
	if end > seen[r.Job] {
		seen[r.Job] = end
		g.WithLabelValues(r.Job).Set(end)
	}
}

func (m *Metrics) setEtcdUp(up bool) {
	if m == nil {
		return
	}
	if up {
		m.etcdUp.WithLabelValues().Set(1)
	} else {
		m.etcdUp.WithLabelValues().Set(0)
	}
}

func (m *Metrics) setClockOffset(member string, seconds float64) {
	if m == nil {
		return
	}
	m.clockOffset.WithLabelValues(member).Set(seconds)
}

// drill sets a drill job's gauges from its newest successful record.
func (m *Metrics) drill(r Run) {
	end := float64(r.Finished.UnixMilli()) / 1000
	m.mu.Lock()
	defer m.mu.Unlock()
	if end > m.drillLast[r.Job] {
		m.drillLast[r.Job] = end
		m.drillSuccess.WithLabelValues(r.Job).Set(end)
		m.drillQuery.WithLabelValues(r.Job).Set(r.QuerySeconds)
	}
}

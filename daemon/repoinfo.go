package daemon

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgkeep/pgkeep/archive"
	"github.com/pgkeep/pgkeep/repo"
)

// minRefreshGap spaces the repository refreshes that jobs ask for: a
// burst of short jobs costs one listing per gap, not one each.
const minRefreshGap = 30 * time.Second

// repoInfo keeps the repository metrics: repo.Info (what `pgkeep info`
// prints, from one listing of wal/ and one of backups/), computed at
// start, every interval and after jobs (at most once per minRefreshGap),
// never on a scrape. The progress of a backup this daemon runs is live.
type repoInfo struct {
	r     *repo.Repository
	every time.Duration
	log   *slog.Logger
	kick  chan struct{}

	mu      sync.Mutex
	inf     *repo.Info
	at      time.Time // end of the last successful refresh
	took    time.Duration
	errs    int
	lastErr time.Time

	// This daemon's running backup: active while one runs.
	active      atomic.Bool
	done, total atomic.Int64
}

func newRepoInfo(r *repo.Repository, every time.Duration, log *slog.Logger) *repoInfo {
	return &repoInfo{r: r, every: every, log: log, kick: make(chan struct{}, 1)}
}

// refreshSoon asks for a refresh (after a job).
func (c *repoInfo) refreshSoon() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// run refreshes until ctx ends.
func (c *repoInfo) run(ctx context.Context) {
	t := time.NewTicker(c.every)
	defer t.Stop()
	var last time.Time
	for {
		last = time.Now()
		c.refresh(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.kick:
			if wait := minRefreshGap - time.Since(last); wait > 0 {
				w := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					w.Stop()
					return
				case <-w.C:
				}
			}
		}
	}
}

func (c *repoInfo) refresh(ctx context.Context) {
	start := time.Now()
	inf, err := c.r.Info(ctx, start)
	if ctx.Err() != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.errs++
		c.lastErr = time.Now()
		c.log.Warn("computing the repository metrics failed; they keep their previous values", "err", err)
		return
	}
	c.inf, c.at, c.took = inf, time.Now(), time.Since(start)
}

// progress is the archive.Progress of a backup job this daemon runs.
func (c *repoInfo) progress() archive.Progress { return (*localProgress)(c) }

type localProgress repoInfo

func (p *localProgress) Start(total int64) {
	p.done.Store(0)
	p.total.Store(total)
	p.active.Store(true)
}
func (p *localProgress) Add(n int64) { p.done.Add(n) }
func (p *localProgress) Finish()     { p.active.Store(false) }

func desc(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }

var (
	descNewestBackup = desc(MetricRepoNewestBackup, "Unix time at which the repository's newest committed backup ended (its consistency point); absent without backups.")
	descOldestBackup = desc(MetricRepoOldestBackup, "Unix time at which the repository's oldest committed backup ended; absent without backups.")
	descNewestBytes  = desc(MetricRepoNewestBackupBytes, "Database size of the newest committed backup, in bytes.")
	descNewestStored = desc(MetricRepoNewestBackupStored, "Bytes the newest committed backup stored (compressed, new blocks only).")
	descWindowStart  = desc(MetricRepoRecoveryWindowStart, "First point a restore can reach (the first recoverability point: the end of the oldest usable backup), Unix time; absent when no backup can be restored.")
	descWindowEnd    = desc(MetricRepoRecoveryWindowEnd, "Last point a restore can reach (when the store received the newest WAL segment archived without a gap after the newest usable backup), Unix time; absent when no backup can be restored.")
	descNewestWAL    = desc(MetricRepoNewestWAL, "Unix time at which the store received the newest archived WAL segment (any timeline); absent without WAL.")
	descWALGaps      = desc(MetricRepoWALGaps, "Stretches of missing WAL segments between the first and last archived segment, summed over timelines.")
	descSize         = desc(MetricRepoSize, "Bytes the repository stores (as listed: WAL, backups and debris).")
	descBackups      = desc(MetricRepoBackups, "Committed backups in the repository.")
	descRunDone      = desc(MetricRunningBackupDone, "Bytes read so far by the backups running now (this daemon's live, other hosts' from their heartbeat); absent when none runs.")
	descRunTotal     = desc(MetricRunningBackupTotal, "Bytes the backups running now will read in all; absent when none runs.")
	descRefreshed    = desc(MetricRepoInfoRefreshed, "Unix time of the last successful computation of the repository metrics; absent before the first.")
	descRefreshTook  = desc(MetricRepoInfoRefreshDuration, "Seconds the last successful computation of the repository metrics took.")
	descRefreshErrs  = desc(MetricRepoInfoRefreshErrors, "Failed computations of the repository metrics (storage unreachable, ...).")
	descRefreshErrAt = desc(MetricRepoInfoLastRefreshError, "Unix time of the last failed computation of the repository metrics; absent before the first.")
)

func (c *repoInfo) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descNewestBackup, descOldestBackup, descNewestBytes, descNewestStored, descWindowStart, descWindowEnd,
		descNewestWAL, descWALGaps, descSize, descBackups, descRunDone, descRunTotal, descRefreshed, descRefreshTook, descRefreshErrs, descRefreshErrAt} {
		ch <- d
	}
}

func (c *repoInfo) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	c.mu.Lock()
	defer c.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descRefreshErrs, prometheus.CounterValue, float64(c.errs))
	if !c.lastErr.IsZero() {
		gauge(descRefreshErrAt, unixSeconds(c.lastErr))
	}
	if c.active.Load() {
		gauge(descRunDone, float64(c.done.Load()))
		gauge(descRunTotal, float64(c.total.Load()))
	} else if c.inf != nil && len(c.inf.Running) > 0 {
		var done, total int64
		for _, rb := range c.inf.Running {
			done, total = done+rb.BytesDone, total+rb.BytesTotal
		}
		gauge(descRunDone, float64(done))
		gauge(descRunTotal, float64(total))
	}
	inf := c.inf
	if inf == nil {
		return
	}
	gauge(descRefreshed, unixSeconds(c.at))
	gauge(descRefreshTook, c.took.Seconds())
	gauge(descSize, float64(inf.Size.Total))
	gauge(descBackups, float64(len(inf.Backups)))
	if len(inf.Backups) > 0 {
		newest, oldest := inf.Backups[0], inf.Backups[0]
		for _, b := range inf.Backups[1:] {
			if b.StopTime.After(newest.StopTime) {
				newest = b
			}
			if b.StopTime.Before(oldest.StopTime) {
				oldest = b
			}
		}
		gauge(descNewestBackup, unixSeconds(newest.StopTime))
		gauge(descOldestBackup, unixSeconds(oldest.StopTime))
		gauge(descNewestBytes, float64(newest.DataSize))
		gauge(descNewestStored, float64(newest.StoredSize))
	}
	if w := inf.RecoveryWindow; w != nil {
		gauge(descWindowStart, unixSeconds(w.FirstTime))
		gauge(descWindowEnd, unixSeconds(w.LastTime))
	}
	var newestWAL time.Time
	gaps := 0
	for _, t := range inf.Timelines {
		gaps += t.GapCount
		if t.LastArchived != nil && t.LastArchived.After(newestWAL) {
			newestWAL = *t.LastArchived
		}
	}
	gauge(descWALGaps, float64(gaps))
	if !newestWAL.IsZero() {
		gauge(descNewestWAL, unixSeconds(newestWAL))
	}
}

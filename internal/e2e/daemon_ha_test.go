package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pgkeep/pgkeep/ha"
	"github.com/pgkeep/pgkeep/internal/patronitest"
	"github.com/pgkeep/pgkeep/internal/pgtest"
	"github.com/pgkeep/pgkeep/scheduler"
)

// repoBackup is a committed backup as its backup.json says.
type repoBackup struct {
	ID        string    `json:"id"`
	StartTime time.Time `json:"start_time"`
	StopTime  time.Time `json:"stop_time"`
	Schedule  *struct {
		Job  string    `json:"job"`
		Time time.Time `json:"time"`
	} `json:"schedule"`
}

// committedBackups reads every backups/<id>/backup.json of a file
// repository: the complete backups, whatever any record says.
func committedBackups(t *testing.T, r *testRepo) []repoBackup {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(r.repoDir, "backups", "*", "backup.json"))
	if err != nil {
		t.Fatal(err)
	}
	var out []repoBackup
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var b repoBackup
		if err := json.Unmarshal(data, &b); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].StartTime.Before(out[j].StartTime) })
	return out
}

// tryRecords is records for a loop that runs while etcd may be paused.
func tryRecords(h *ha.Client, job string) ([]scheduler.Run, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	runs, err := scheduler.FinalRuns(ctx, h)
	var out []scheduler.Run
	for _, r := range runs {
		if r.Job == job {
			out = append(out, r)
		}
	}
	return out, err
}

// haCluster starts a three-node Patroni cluster with one batch of rows,
// two streaming replicas, a WAL switcher, and an ha client; opts tune
// Patroni's DCS timing.
func haCluster(t *testing.T, scope string, o patronitest.Options) (*testRepo, *patronitest.Cluster, *patronitest.Node, *ha.Client) {
	t.Helper()
	r := newRepo(t, repoOpts{kind: "fs"})
	etcd := patronitest.StartEtcd(t)
	o.Scope, o.Nodes, o.Pgkeep, o.PgkeepConfig = scope, 3, pgkeepBin(t), r.config
	c := patronitest.New(t, etcd, o)
	c.StartNode(t, c.Nodes[0])
	leader := c.WaitLeader(t, 2*time.Minute)
	lc := mustConn(t, leader)
	execSQL(t, lc, "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)")
	insertBatch(t, lc, 1)
	for _, n := range c.Nodes[1:] {
		c.StartNode(t, n)
	}
	for _, n := range c.Nodes[1:] {
		c.WaitStreaming(t, leader, n, 3*time.Minute)
	}
	stop := walSwitcher(t, c)
	t.Cleanup(stop)
	h, err := ha.Connect(context.Background(), ha.Options{Endpoints: []string{etcd.URL}, Scope: c.Scope})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	pgtest.WaitFor(t, time.Minute, "etcd to show both replicas within max_lag", func() (bool, error) {
		view, err := h.View(context.Background())
		if err != nil {
			return false, nil
		}
		return len(scheduler.Eligible(view, scheduler.PreferReplica, 64<<20)) == 3, nil
	})
	return r, c, leader, h
}

// seed is PGKEEP_TEST_SEED or the time; tests log it so a failure can be
// replayed.
func seed(t *testing.T) int64 {
	if s := os.Getenv("PGKEEP_TEST_SEED"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("PGKEEP_TEST_SEED: %v", err)
		}
		return n
	}
	return time.Now().UnixNano()
}

// TestPatroniDaemonEtcdPauses: etcd is paused (SIGSTOP) for longer than
// the job lock's TTL at seeded random points of scheduled backups (during
// pg_backup_start, the copy, the wait for WAL or the commit), over at
// least 20 scheduled times on a real Patroni cluster. Every scheduled
// time ends with exactly one complete backup in the repository, carrying
// the job and time it was taken for, and every complete backup is the one
// of its scheduled time's record.
func TestPatroniDaemonEtcdPauses(t *testing.T) {
	sd := seed(t)
	rng := rand.New(rand.NewSource(sd))
	t.Logf("seed %d (PGKEEP_TEST_SEED replays it)", sd)
	// Patroni rides out pauses up to retry_timeout (loop_wait +
	// 2*retry_timeout <= ttl): the test is about pgkeep, not failovers.
	r, c, _, h := haCluster(t, "pauses", patronitest.Options{TTL: 60, LoopWait: 2, RetryTimeout: 25})
	const lockTTL = 3 * time.Second
	const jobs = `    - {name: backup, kind: backup, schedule: "*/6 * * * * *", run_on: prefer-replica, max_lag: 64MB, window: 90s}
`
	var ds []*daemonProc
	for _, n := range c.Nodes {
		ds = append(ds, startDaemonWith(t, r, c, n, jobs, daemonOpts{lockTTL: "3s", takeover: "4s"}))
	}
	start := time.Now()

	// The pauser: after a seeded random number of backups starting, wait
	// a random 0..3 s into the backup, then freeze etcd for lock TTL + 1 s
	// up to 18 s (bounded: at most 8 pauses).
	type pause struct {
		at  time.Time
		dur time.Duration
	}
	var (
		pmu    sync.Mutex
		pauses []pause
	)
	quit := make(chan struct{})
	pauserDone := make(chan struct{})
	t.Cleanup(func() { c.Etcd.Resume() })
	go func() {
		defer close(pauserDone)
		seen := 0
		next := 1 + rng.Intn(2)
		for i := 0; i < 2000 && len(pauses) < 8; i++ {
			select {
			case <-quit:
				return
			case <-time.After(200 * time.Millisecond):
			}
			n := 0
			for _, d := range ds {
				n += strings.Count(d.Log(), "msg=\"backup starting\"")
			}
			if n <= seen {
				continue
			}
			seen = n
			if n < next {
				continue
			}
			next = n + 1 + rng.Intn(3)
			into := time.Duration(rng.Int63n(int64(3 * time.Second)))
			dur := lockTTL + time.Second + time.Duration(rng.Int63n(int64(18*time.Second-lockTTL-time.Second)))
			time.Sleep(into)
			at := time.Now()
			if err := c.Etcd.Pause(); err != nil {
				return
			}
			time.Sleep(dur)
			c.Etcd.Resume()
			pmu.Lock()
			pauses = append(pauses, pause{at, dur})
			pmu.Unlock()
		}
	}()

	// Run until 20 scheduled times after the first have final records
	// (bounded), then stop pausing and wait for the last one.
	var first time.Time
	const ticks = 20
	deadline := time.Now().Add(8 * time.Minute)
	for {
		recs, err := tryRecords(h, "backup")
		if err != nil { // etcd paused
			time.Sleep(time.Second)
			continue
		}
		if len(recs) > 0 && first.IsZero() {
			first = recs[0].Scheduled
		}
		if !first.IsZero() {
			last := first.Add((ticks - 1) * 6 * time.Second)
			done := 0
			for _, rec := range recs {
				if !rec.Scheduled.After(last) {
					done++
				}
			}
			if done >= ticks {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Errorf("20 scheduled times not all recorded by %s (first %s): %d records", deadline.Format(time.TimeOnly), first.Format(time.TimeOnly), len(recs))
			break
		}
		time.Sleep(time.Second)
	}
	close(quit)
	<-pauserDone
	c.Etcd.Resume()
	// Let runs of later ticks that started end, then stop every daemon.
	time.Sleep(5 * time.Second)
	for _, d := range ds {
		d.stop(t)
	}

	recs := records(t, h, "backup")
	backups := committedBackups(t, r)
	byID := map[string]repoBackup{}
	for _, b := range backups {
		byID[b.ID] = b
	}
	recorded := map[string]bool{}
	last := first.Add((ticks - 1) * 6 * time.Second)
	for tick := first; !tick.After(last); tick = tick.Add(6 * time.Second) {
		var rec *scheduler.Run
		for i := range recs {
			if recs[i].Scheduled.Equal(tick) {
				rec = &recs[i]
			}
		}
		if rec == nil {
			t.Errorf("%s: no final record", tick.Format(time.TimeOnly))
			continue
		}
		if rec.Status != scheduler.StatusSucceeded {
			t.Errorf("%s: %s on %s: %s", tick.Format(time.TimeOnly), rec.Status, rec.Node, rec.Error)
			continue
		}
		b, ok := byID[rec.BackupID]
		if !ok {
			t.Errorf("%s: recorded backup %s is not complete in the repository", tick.Format(time.TimeOnly), rec.BackupID)
		} else if b.Schedule == nil || b.Schedule.Job != "backup" || !b.Schedule.Time.Equal(tick) {
			t.Errorf("%s: backup %s does not say it is the backup of this scheduled time: %+v", tick.Format(time.TimeOnly), b.ID, b.Schedule)
		}
		recorded[rec.BackupID] = true
	}
	perTime := map[int64][]string{}
	for _, b := range backups {
		if b.Schedule != nil {
			perTime[b.Schedule.Time.Unix()] = append(perTime[b.Schedule.Time.Unix()], b.ID)
		}
		if !b.StartTime.Before(first) && b.StartTime.Before(last.Add(6*time.Second)) && !recorded[b.ID] {
			t.Errorf("complete backup %s (started %s) is the backup of no recorded scheduled time", b.ID, b.StartTime.Format(time.TimeOnly))
		}
	}
	for tm, ids := range perTime {
		if len(ids) != 1 {
			t.Errorf("scheduled time %s has %d complete backups: %v", time.Unix(tm, 0).UTC().Format(time.TimeOnly), len(ids), ids)
		}
	}
	pmu.Lock()
	var ps []string
	for _, p := range pauses {
		ps = append(ps, fmt.Sprintf("%s+%s", p.at.Sub(start).Round(100*time.Millisecond), p.dur.Round(100*time.Millisecond)))
	}
	pmu.Unlock()
	logs := ""
	for _, d := range ds {
		logs += d.Log()
	}
	t.Logf("%d scheduled times from %s, %d complete backups, %d pauses of etcd (start+duration): %s; lock lost %d times, %d results adopted from the repository",
		ticks, first.Format(time.TimeOnly), len(backups), len(ps), strings.Join(ps, " "),
		strings.Count(logs, "lock lost"), strings.Count(logs, "found in the repository"))
	if len(ps) < 3 {
		t.Errorf("only %d pauses: the test did not test much", len(ps))
	}
	if strings.Contains(logs, "job result discarded") {
		t.Errorf("a daemon logged a discarded result")
	}
}

// health scrapes a daemon's /healthz: the status code.
func health(d *daemonProc) int {
	cl := &http.Client{Timeout: 3 * time.Second}
	resp, err := cl.Get(d.metrics + "/healthz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestPatroniDaemonHealthOnLockLoss: a replica's backup waits for its WAL
// (nothing switches segments) when etcd freezes (SIGSTOP). The holder's
// /healthz answers 503 within seconds, and when it logs "lock lost",
// pgkeep_etcd_up and pgkeep_job_lock_held are 0 already.
func TestPatroniDaemonHealthOnLockLoss(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs"})
	etcd := patronitest.StartEtcd(t)
	c := patronitest.New(t, etcd, patronitest.Options{Scope: "health", Nodes: 2, Pgkeep: pgkeepBin(t), PgkeepConfig: r.config,
		TTL: 60, LoopWait: 2, RetryTimeout: 25})
	c.StartNode(t, c.Nodes[0])
	leader := c.WaitLeader(t, 2*time.Minute)
	c.StartNode(t, c.Nodes[1])
	c.WaitStreaming(t, leader, c.Nodes[1], 3*time.Minute)
	// WAL in a segment nothing will switch (archive_timeout is off): the
	// replica's backup waits for it to be archived.
	lc := mustConn(t, leader)
	execSQL(t, lc, "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)")
	insertBatch(t, lc, 1)
	h, err := ha.Connect(context.Background(), ha.Options{Endpoints: []string{etcd.URL}, Scope: c.Scope})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	pgtest.WaitFor(t, time.Minute, "etcd to show the replica", func() (bool, error) {
		view, err := h.View(context.Background())
		return err == nil && len(scheduler.Eligible(view, scheduler.Replica, 64<<20)) == 1, nil
	})
	const jobs = `    - {name: backup, kind: backup, schedule: "*/10 * * * * *", run_on: replica, max_lag: 64MB}
`
	d := startDaemonWith(t, r, c, c.Nodes[1], jobs, daemonOpts{lockTTL: "3s"})
	pgtest.WaitFor(t, time.Minute, "the replica's backup to wait for its WAL", func() (bool, error) {
		return strings.Contains(d.Log(), "waiting for the primary to archive"), nil
	})
	time.Sleep(time.Second)
	if strings.Contains(d.Log(), "backup complete") {
		t.Fatalf("the backup did not wait for its WAL:\n%s", d.Log())
	}
	if m := scrape(t, d.metrics); !strings.Contains(m, scheduler.MetricHeld+`{job_name="backup"} 1`) || health(d) != 200 {
		t.Fatalf("during the backup: health %d\n%s", health(d), grepLines(m, "pgkeep_"))
	}
	t.Cleanup(func() { etcd.Resume() })
	if err := etcd.Pause(); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	for health(d) != 503 && time.Since(paused) < 10*time.Second {
		time.Sleep(100 * time.Millisecond)
	}
	if code := health(d); code != 503 {
		t.Errorf("/healthz %d 10 s after etcd froze", code)
	} else {
		t.Logf("/healthz 503 %s after etcd froze", time.Since(paused).Round(100*time.Millisecond))
	}
	pgtest.WaitFor(t, 20*time.Second, "the daemon to log that the lock is lost", func() (bool, error) {
		return strings.Contains(d.Log(), `msg="lock lost"`), nil
	})
	lost := time.Since(paused)
	t.Logf("\"lock lost\" logged %s after etcd froze (lock_ttl 3s)", lost.Round(100*time.Millisecond))
	m, code := scrape(t, d.metrics), health(d)
	if !strings.Contains(m, scheduler.MetricHeld+`{job_name="backup"} 0`) || !strings.Contains(m, scheduler.MetricEtcdUp+" 0") || code != 503 {
		t.Errorf("right after \"lock lost\" (%s after the freeze): /healthz %d, metrics:\n%s", lost.Round(100*time.Millisecond), code, grepLines(m, "pgkeep_"))
	}
	etcd.Resume()
	pgtest.WaitFor(t, 20*time.Second, "/healthz to answer 200 again", func() (bool, error) { return health(d) == 200, nil })
	d.stop(t)
}

func grepLines(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestPatroniDaemonTakeoverRanking: under prefer-replica the first
// replica's daemon is not running. Every scheduled time is taken over by
// the other replica, next in line, never by the primary, which is last.
func TestPatroniDaemonTakeoverRanking(t *testing.T) {
	r, c, leader, h := haCluster(t, "rank", patronitest.Options{})
	view, err := h.View(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	el := scheduler.Eligible(view, scheduler.PreferReplica, 64<<20)
	if len(el) != 3 || el[2] != leader.Name {
		t.Fatalf("ranking %v, want two replicas then the leader %s", el, leader.Name)
	}
	const jobs = `    - {name: backup, kind: backup, schedule: "*/10 * * * * *", run_on: prefer-replica, max_lag: 64MB, window: 60s}
`
	var ds []*daemonProc
	for _, name := range el[1:] { // not el[0]: its daemon is "dead"
		ds = append(ds, startDaemonWith(t, r, c, c.Node(name), jobs, daemonOpts{lockTTL: "3s", takeover: "3s"}))
	}
	start := time.Now()
	const ticks = 6
	var recs []scheduler.Run
	pgtest.WaitFor(t, 3*time.Minute, fmt.Sprintf("%d scheduled times recorded", ticks), func() (bool, error) {
		recs = nil
		for _, rec := range records(t, h, "backup") {
			if rec.Scheduled.After(start) {
				recs = append(recs, rec)
			}
		}
		return len(recs) >= ticks, nil
	})
	for _, d := range ds {
		d.stop(t)
	}
	byNode := map[string]int{}
	for _, rec := range recs {
		byNode[rec.Node]++
		if rec.Status != scheduler.StatusSucceeded || rec.Node != el[1] {
			t.Errorf("%s: %s on %s (%s), want a success on %s, next in line", rec.Scheduled.Format(time.TimeOnly), rec.Status, rec.Node, rec.Role, el[1])
		}
	}
	t.Logf("%d takeovers: %v (ranking %v, %s without a daemon)", len(recs), byNode, el, el[0])
}

// TestPatroniDaemonClockSkewStaleEtcd covers three ways of running a
// scheduled time twice or at the wrong time:
//   - the first replica's daemon runs with a clock 30 s ahead: no backup
//     starts before its scheduled time (on the real clock), and the other
//     daemons report the skew;
//   - a fourth daemon, for that same replica, is pointed at a stale etcd (a
//     copy of the cluster's keys, as a restored snapshot has them, without
//     pgkeep's records): it takes its own lock there for every scheduled
//     time, yet each scheduled time has exactly one complete backup;
//   - `patronictl remove` deletes Patroni's keys, not pgkeep's records.
func TestPatroniDaemonClockSkewStaleEtcd(t *testing.T) {
	r, c, leader, h := haCluster(t, "skew", patronitest.Options{})
	view, err := h.View(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	el := scheduler.Eligible(view, scheduler.PreferReplica, 64<<20)
	fast := c.Node(el[0])
	const jobs = `    - {name: backup, kind: backup, schedule: "*/10 * * * * *", run_on: prefer-replica, max_lag: 64MB, window: 60s}
`
	t.Run("clock 30s ahead", func(t *testing.T) {
		ds := map[string]*daemonProc{}
		for _, n := range c.Nodes {
			o := daemonOpts{lockTTL: "3s", takeover: "20s"}
			if n == fast {
				o.env = []string{"PGKEEP_TEST_CLOCK_OFFSET=30s"}
			}
			ds[n.Name] = startDaemonWith(t, r, c, n, jobs, o)
		}
		start := time.Now()
		pgtest.WaitFor(t, 2*time.Minute, "three scheduled backups", func() (bool, error) {
			n := 0
			for _, rec := range records(t, h, "backup") {
				if rec.Scheduled.After(start) && rec.Status == scheduler.StatusSucceeded {
					n++
				}
			}
			return n >= 3, nil
		})
		other := ds[el[1]]
		m := scrape(t, other.metrics)
		for _, d := range ds {
			d.stop(t)
		}
		byID := map[string]repoBackup{}
		for _, b := range committedBackups(t, r) {
			byID[b.ID] = b
		}
		for _, rec := range records(t, h, "backup") {
			b, ok := byID[rec.BackupID]
			if !rec.Scheduled.After(start) || !ok {
				continue
			}
			// StartTime is the backup's own (unskewed) clock.
			if early := rec.Scheduled.Sub(b.StartTime); early > 500*time.Millisecond {
				t.Errorf("backup %s for %s (by %s) started %s early, at %s", b.ID, rec.Scheduled.Format(time.TimeOnly), rec.Node, early.Round(100*time.Millisecond), b.StartTime.Format(time.TimeOnly))
			}
		}
		want := scheduler.MetricClockOffset + `{member="` + fast.Name + `"} `
		i := strings.Index(m, want)
		var off float64
		if i >= 0 {
			fmt.Sscanf(m[i+len(want):], "%g", &off)
		}
		if i < 0 || off < 25 || off > 31 {
			t.Errorf("%s's metrics give %s's clock offset %v, want about 30 s:\n%s", other.node.Name, fast.Name, off, grepLines(m, scheduler.MetricClockOffset))
		}
		if !strings.Contains(other.Log(), "clock skew") {
			t.Errorf("%s did not warn about %s's clock", other.node.Name, fast.Name)
		}
		t.Logf("%s sees %s's clock %.1f s ahead", other.node.Name, fast.Name, off)
	})

	t.Run("a daemon on a stale etcd", func(t *testing.T) {
		stale := patronitest.StartEtcd(t)
		copyKeys(t, c.Etcd.URL, stale.URL, "/service/"+c.Scope+"/")
		var ds []*daemonProc
		for _, n := range c.Nodes {
			ds = append(ds, startDaemonWith(t, r, c, n, jobs, daemonOpts{lockTTL: "3s"}))
		}
		staleD := startDaemonWith(t, r, c, fast, jobs, daemonOpts{lockTTL: "3s", etcd: stale.URL})
		start := time.Now()
		var recs []scheduler.Run
		pgtest.WaitFor(t, 2*time.Minute, "four scheduled times recorded", func() (bool, error) {
			recs = nil
			for _, rec := range records(t, h, "backup") {
				if rec.Scheduled.After(start) {
					recs = append(recs, rec)
				}
			}
			return len(recs) >= 4, nil
		})
		time.Sleep(5 * time.Second) // the stale daemon's runs of those times end
		for _, d := range append(ds, staleD) {
			d.stop(t)
		}
		recs = nil
		for _, rec := range records(t, h, "backup") {
			if rec.Scheduled.After(start) {
				recs = append(recs, rec)
			}
		}
		per := map[int64][]string{}
		since := 0
		for _, b := range committedBackups(t, r) {
			if b.StartTime.After(start) {
				since++
			}
			if b.Schedule != nil {
				per[b.Schedule.Time.Unix()] = append(per[b.Schedule.Time.Unix()], b.ID)
			} else if b.StartTime.After(start) {
				t.Errorf("backup %s (started %s) has no scheduled time", b.ID, b.StartTime.Format(time.TimeOnly))
			}
		}
		for _, rec := range recs {
			if ids := per[rec.Scheduled.Unix()]; len(ids) != 1 || ids[0] != rec.BackupID {
				t.Errorf("%s: complete backups %v, recorded %s", rec.Scheduled.Format(time.TimeOnly), ids, rec.BackupID)
			}
		}
		if since != len(recs) {
			t.Errorf("%d complete backups taken since the stale daemon started, for %d scheduled times", since, len(recs))
		}
		log := staleD.Log()
		t.Logf("stale daemon: %d runs started, %d results found in the repository, %d not kept",
			strings.Count(log, "job starting"), strings.Count(log, "found in the repository"), strings.Count(log, "job result not kept"))
		for tm, ids := range per {
			if len(ids) != 1 {
				t.Errorf("scheduled time %s has %d complete backups: %v", time.Unix(tm, 0).UTC().Format(time.TimeOnly), len(ids), ids)
			}
		}
	})

	t.Run("patronictl remove keeps pgkeep's records", func(t *testing.T) {
		before := countKeys(t, c.Etcd.URL, h.RecordKey("runs/"))
		if before == 0 {
			t.Fatal("no run records to begin with")
		}
		cmd := exec.Command("patronictl", "-c", leader.Config, "remove", c.Scope)
		cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/tmp", "LANG=C.UTF-8"}
		cmd.Stdin = strings.NewReader(c.Scope + "\nYes I am aware\n" + leader.Name + "\n")
		pgtest.AsPostgres(t, cmd)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("patronictl remove: %v\n%s", err, out)
		}
		if n := countKeys(t, c.Etcd.URL, "/service/"+c.Scope+"/members/"); n > 0 {
			t.Logf("%d member keys back already (Patroni re-registers)", n)
		}
		if after := countKeys(t, c.Etcd.URL, h.RecordKey("runs/")); after != before {
			t.Errorf("%d run records after patronictl remove, %d before", after, before)
		}
	})
}

// copyKeys copies every key under prefix from one etcd to another,
// without leases: a restored snapshot of the cluster, frozen.
func copyKeys(t *testing.T, from, to, prefix string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src, err := clientv3.New(clientv3.Config{Endpoints: []string{from}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := clientv3.New(clientv3.Config{Endpoints: []string{to}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	resp, err := src.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if _, err := dst.Put(ctx, string(kv.Key), string(kv.Value)); err != nil {
			t.Fatal(err)
		}
	}
}

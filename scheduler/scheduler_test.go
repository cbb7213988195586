package scheduler_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgkeep/pgkeep/ha"
	"github.com/pgkeep/pgkeep/internal/etcdtest"
	"github.com/pgkeep/pgkeep/internal/pgtest"
	"github.com/pgkeep/pgkeep/scheduler"
)

// event is one call of a recorder's Run.
type event struct {
	member     string
	scheduled  time.Time
	start, end time.Time
	err        error
}

// recorder is the runners of several in-process daemons: it records every
// run, checks that no two runs of one scheduled time overlap, and sleeps.
type recorder struct {
	mu      sync.Mutex
	events  []*event
	active  map[int64]int
	overlap []string
	// hold, when it returns true for a run, blocks the run until its
	// context ends (a daemon that hangs mid-run); started receives the
	// scheduled time of held runs.
	hold    func(member string, t time.Time) bool
	started chan time.Time
	sleep   time.Duration
	// claims is the simulated repository: the one result committed per
	// scheduled time (by unix time), as repo's claims make it.
	claims map[int64]string
	// beforeCommit, when set, runs (unlocked) before a run commits.
	beforeCommit func(member string, t time.Time)
}

// holdFirst makes member's first run hang until its context ends.
func (r *recorder) holdFirst(member string) {
	var victim time.Time
	r.hold = func(m string, tick time.Time) bool {
		if m == member && victim.IsZero() {
			victim = tick
			return true
		}
		return false
	}
}

// waitHeld returns the scheduled time of the held run once it started.
func (r *recorder) waitHeld(t *testing.T, member string) time.Time {
	t.Helper()
	select {
	case tick := <-r.started:
		return tick
	case <-time.After(20 * time.Second):
		t.Fatalf("%s never started a run", member)
	}
	return time.Time{}
}

type memberRunner struct {
	r      *recorder
	member string
}

func newRecorder(sleep time.Duration) *recorder {
	return &recorder{active: map[int64]int{}, sleep: sleep, started: make(chan time.Time, 100), claims: map[int64]string{}}
}

func (m memberRunner) Run(ctx context.Context, job scheduler.Job, t time.Time) (scheduler.Result, error) {
	r := m.r
	ev := &event{member: m.member, scheduled: t, start: time.Now()}
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.active[t.Unix()]++
	if r.active[t.Unix()] > 1 {
		r.overlap = append(r.overlap, fmt.Sprintf("%s: %d runs at once (%s joined)", t.Format(time.TimeOnly), r.active[t.Unix()], m.member))
	}
	hold := r.hold != nil && r.hold(m.member, t)
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.active[t.Unix()]--
		ev.end = time.Now()
		r.mu.Unlock()
	}()
	d := r.sleep
	if hold {
		r.started <- t
		d = time.Hour
	}
	select {
	case <-ctx.Done():
		ev.err = context.Cause(ctx)
		return scheduler.Result{}, fmt.Errorf("run aborted: %w", ev.err)
	case <-time.After(d):
	}
	if r.beforeCommit != nil {
		r.beforeCommit(m.member, t)
	}
	id := m.member + "-" + fmt.Sprint(t.Unix())
	r.mu.Lock()
	defer r.mu.Unlock()
	if got, ok := r.claims[t.Unix()]; ok && got != id {
		ev.err = fmt.Errorf("%w: %s", scheduler.ErrAlreadyDone, got)
		return scheduler.Result{}, ev.err
	}
	r.claims[t.Unix()] = id
	return scheduler.Result{BackupID: id, Bytes: 42}, nil
}

func (m memberRunner) Find(ctx context.Context, job scheduler.Job, t time.Time) (scheduler.Result, bool, error) {
	m.r.mu.Lock()
	defer m.r.mu.Unlock()
	id, ok := m.r.claims[t.Unix()]
	if !ok {
		return scheduler.Result{}, false, nil
	}
	return scheduler.Result{BackupID: id, Bytes: 42}, true, nil
}

// completed returns, per scheduled time, the members whose runs completed
// and committed their result.
func (r *recorder) completed() map[int64][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[int64][]string{}
	for _, ev := range r.events {
		if !ev.end.IsZero() && ev.err == nil {
			out[ev.scheduled.Unix()] = append(out[ev.scheduled.Unix()], ev.member)
		}
	}
	return out
}

func (r *recorder) snapshot() []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]event, len(r.events))
	for i, ev := range r.events {
		out[i] = *ev
	}
	return out
}

// daemon is one in-process scheduler with its own etcd client.
type daemon struct {
	member string
	ha     *ha.Client
	sched  *scheduler.Scheduler
	cancel context.CancelFunc
	done   chan struct{}
}

func (d *daemon) stop() {
	d.cancel()
	<-d.done
}

func startDaemon(t *testing.T, s *etcdtest.Server, scope, member string, r *recorder, logs *logBuffer, o scheduler.Options) *daemon {
	t.Helper()
	d := &daemon{member: member, ha: connect(t, s, scope, member), done: make(chan struct{})}
	o.HA, o.Member, o.Runner = d.ha, member, memberRunner{r, member}
	if logs != nil {
		o.Logger = logs.logger(member)
	}
	sc, err := scheduler.New(o)
	if err != nil {
		t.Fatal(err)
	}
	d.sched = sc
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	go func() {
		defer close(d.done)
		sc.Run(ctx)
	}()
	t.Cleanup(d.stop)
	return d
}

func finalRecords(t *testing.T, c *ha.Client, job string) map[int64]scheduler.Run {
	t.Helper()
	// The client's own timeout per request is short (a daemon's): on a
	// loaded machine one read can miss it, which says nothing about the
	// records. Retried a few times before it fails the test.
	var es []ha.Entry
	var err error
	for range 5 {
		if es, err = c.List(tctx(t, 10*time.Second), "runs/"+job+"/"); err == nil {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	out := map[int64]scheduler.Run{}
	for _, e := range es {
		var r scheduler.Run
		if err := json.Unmarshal(e.Value, &r); err != nil {
			t.Fatal(err)
		}
		out[r.Scheduled.Unix()] = r
	}
	return out
}

// Three daemons with their own etcd clients and member names, a job every
// 2 seconds, and a topology that flips between "pg2 may run it" and "pg3
// may run it" every 1.3 s so that the daemons often disagree and runs get
// aborted mid-way: every scheduled time ends with exactly one completed
// run and one final record, and no two runs of a scheduled time overlap.
func TestExactlyOnceThreeDaemons(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.Options{})
	cli := s.Client(t)
	writeCluster(t, cli, "demo", threeNodes())
	const maxLag = 1 << 20
	flip := func(pg2Behind bool) {
		lagging, ok := "members/pg3", "members/pg2"
		if pg2Behind {
			lagging, ok = ok, lagging
		}
		port := map[string]int{"members/pg2": 5433, "members/pg3": 5434}
		writeCluster(t, cli, "demo", map[string]*string{
			lagging: str(member(port[lagging], "replica", "running", leaderPos-2*maxLag, "")),
			ok:      str(member(port[ok], "replica", "running", leaderPos-100, "")),
		})
	}
	r := newRecorder(700 * time.Millisecond)
	logs := &logBuffer{}
	o := scheduler.Options{
		Jobs:            []scheduler.Job{{Name: "backup", Kind: "backup", Schedule: "*/2 * * * * *", RunOn: scheduler.PreferReplica, MaxLag: maxLag, Window: 15 * time.Second}},
		LockTTL:         3 * time.Second,
		TakeoverTimeout: 2 * time.Second,
		PollInterval:    100 * time.Millisecond,
		Retries:         10,
		RetryDelay:      200 * time.Millisecond,
	}
	var ds []*daemon
	for _, m := range []string{"pg1", "pg2", "pg3"} {
		ds = append(ds, startDaemon(t, s, "demo", m, r, logs, o))
	}
	// At least a second after the daemons started: cron fires only at
	// times after its start, so a tick at that very instant is never run.
	first := time.Now().Add(time.Second).Truncate(2 * time.Second).Add(2 * time.Second)
	const ticks = 21
	last := first.Add((ticks - 1) * 2 * time.Second)
	stopFlip := make(chan struct{})
	flipDone := make(chan struct{})
	go func() {
		defer close(flipDone)
		pg2Behind := false
		for i := 0; i < 1000; i++ {
			select {
			case <-stopFlip:
				return
			case <-time.After(1300 * time.Millisecond):
			}
			pg2Behind = !pg2Behind
			flip(pg2Behind)
		}
	}()
	// Wait for the last tick to be recorded (bounded).
	deadline := last.Add(40 * time.Second)
	for {
		if _, ok := finalRecords(t, ds[0].ha, "backup")[last.Unix()]; ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tick %s not recorded by %s", last.Format(time.TimeOnly), deadline.Format(time.TimeOnly))
		}
		time.Sleep(200 * time.Millisecond)
	}
	close(stopFlip)
	<-flipDone
	for _, d := range ds {
		d.stop()
	}
	recs := finalRecords(t, ds[0].ha, "backup")
	done := r.completed()
	byNode := map[string]int{}
	aborted := 0
	for _, ev := range r.snapshot() {
		if ev.err != nil {
			aborted++
		}
	}
	for tick := first; !tick.After(last); tick = tick.Add(2 * time.Second) {
		rec, ok := recs[tick.Unix()]
		if !ok {
			t.Errorf("%s: no final record", tick.Format(time.TimeOnly))
			continue
		}
		if rec.Status != scheduler.StatusSucceeded {
			t.Errorf("%s: record %+v", tick.Format(time.TimeOnly), rec)
		}
		runs := done[tick.Unix()]
		if len(runs) != 1 || runs[0] != rec.Node || rec.BackupID != rec.Node+"-"+fmt.Sprint(tick.Unix()) {
			t.Errorf("%s: completed runs %q, record says %s / %s", tick.Format(time.TimeOnly), runs, rec.Node, rec.BackupID)
		}
		byNode[rec.Node]++
	}
	for tick, runs := range done {
		if len(runs) > 1 {
			t.Errorf("%d: completed %d times: %q", tick, len(runs), runs)
		}
	}
	r.mu.Lock()
	if len(r.overlap) > 0 {
		t.Errorf("overlapping runs: %q", r.overlap)
	}
	r.mu.Unlock()
	t.Logf("%d ticks, runs by node %v, %d runs aborted by topology changes", ticks, byNode, aborted)
	if len(byNode) < 2 {
		t.Errorf("the topology flips but one node ran everything: %v", byNode)
	}
	if t.Failed() {
		t.Logf("logs:\n%s", logs.String())
	}
}

// The chosen daemon hangs mid-run and then dies without releasing its
// lock (its etcd connection closes): another eligible daemon takes the
// scheduled time over within lock TTL + takeover timeout, exactly once.
func TestTakeoverWhenHolderDies(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.Options{})
	writeCluster(t, s.Client(t), "demo", threeNodes())
	r := newRecorder(200 * time.Millisecond)
	r.holdFirst("pg2")
	logs := &logBuffer{}
	const ttl, takeover = 3 * time.Second, 2 * time.Second
	o := scheduler.Options{
		Jobs:            []scheduler.Job{{Name: "backup", Kind: "backup", Schedule: "*/2 * * * * *", RunOn: scheduler.Replica, MaxLag: 1 << 20, Window: 30 * time.Second}},
		LockTTL:         ttl,
		TakeoverTimeout: takeover,
		PollInterval:    100 * time.Millisecond,
	}
	var ds []*daemon
	for _, m := range []string{"pg1", "pg2", "pg3"} {
		ds = append(ds, startDaemon(t, s, "demo", m, r, logs, o))
	}
	tick := r.waitHeld(t, "pg2")
	time.Sleep(500 * time.Millisecond)
	// kill -9: the connection goes, the lease is neither renewed nor revoked.
	killed := time.Now()
	ds[1].ha.Close()
	ds[1].cancel()
	var rec scheduler.Run
	for {
		recs := finalRecords(t, ds[0].ha, "backup")
		if got, ok := recs[tick.Unix()]; ok {
			rec = got
			break
		}
		if time.Since(killed) > ttl+takeover+15*time.Second {
			t.Fatalf("scheduled time %s not taken over\n%s", tick.Format(time.TimeOnly), logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(killed)
	t.Logf("taken over by %s %s after the kill (ttl %s, takeover %s)", rec.Node, took.Round(100*time.Millisecond), ttl, takeover)
	// Only pg3 is eligible: pg1 is the leader and the policy is replica.
	if rec.Node != "pg3" || rec.Status != scheduler.StatusSucceeded {
		t.Errorf("record %+v, want a success by pg3", rec)
	}
	// Later ticks: pg2 stays first in line (its Patroni is alive) but its
	// daemon is dead: each is taken over too, still once each.
	time.Sleep(3 * time.Second)
	for _, d := range ds {
		d.stop()
	}
	done := r.completed()
	if len(done[tick.Unix()]) != 1 {
		t.Errorf("victim tick completed by %q", done[tick.Unix()])
	}
	for tk, runs := range done {
		if len(runs) != 1 {
			t.Errorf("%d completed by %q", tk, runs)
		}
	}
	if !strings.Contains(logs.String(), "taking the job over") {
		t.Error("no takeover logged")
	}
	if t.Failed() {
		t.Logf("logs:\n%s", logs.String())
	}
}

// With etcd down no job starts and the daemon says why once; jobs resume
// when etcd is back. The health endpoint follows.
func TestEtcdDownNoJobStarts(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.Options{})
	writeCluster(t, s.Client(t), "demo", threeNodes())
	r := newRecorder(100 * time.Millisecond)
	logs := &logBuffer{}
	o := scheduler.Options{
		Jobs:         []scheduler.Job{{Name: "backup", Kind: "backup", Schedule: "* * * * * *", RunOn: scheduler.Primary}},
		LockTTL:      2 * time.Second,
		PollInterval: 100 * time.Millisecond,
	}
	d := startDaemon(t, s, "demo", "pg1", r, logs, o)
	health := httpServe(t, d.sched.HealthHandler())
	waitRuns := func(n int, after time.Time) {
		t.Helper()
		for i := 0; i < 300; i++ {
			c := 0
			for _, ev := range r.snapshot() {
				if ev.start.After(after) && !ev.end.IsZero() {
					c++
				}
			}
			if c >= n {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("fewer than %d runs after %s\n%s", n, after.Format(time.TimeOnly), logs.String())
	}
	waitRuns(2, time.Time{})
	if code, _ := get(t, health); code != 200 {
		t.Fatalf("health with etcd up: %d", code)
	}
	s.Stop(t)
	down := time.Now()
	time.Sleep(6 * time.Second)
	code, body := get(t, health)
	up := time.Now()
	s.Restart(t)
	for _, ev := range r.snapshot() {
		if ev.start.After(down.Add(200*time.Millisecond)) && ev.start.Before(up) {
			t.Errorf("run started at %s with etcd down (%s..%s)", ev.start.Format(time.TimeOnly), down.Format(time.TimeOnly), up.Format(time.TimeOnly))
		}
	}
	if code != 503 || !strings.Contains(body, "etcd") {
		t.Errorf("health with etcd down: %d %q", code, body)
	}
	waitRuns(2, up)
	if code, _ := get(t, health); code != 200 {
		t.Errorf("health after etcd came back: %d", code)
	}
	d.stop()
	n := strings.Count(logs.String(), "no job starts until it answers")
	if n != 1 {
		t.Errorf("etcd outage logged %d times, want once\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "etcd answers again") {
		t.Error("recovery not logged")
	}
}

// The metrics endpoint has every metric and they move after a run.
func TestMetrics(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.Options{})
	writeCluster(t, s.Client(t), "demo", threeNodes())
	r := newRecorder(300 * time.Millisecond)
	reg := prometheus.NewRegistry()
	m := scheduler.NewMetrics(reg)
	o := scheduler.Options{
		Jobs:         []scheduler.Job{{Name: "nightly", Kind: "backup", Schedule: "*/2 * * * * *", RunOn: scheduler.Primary}},
		PollInterval: 100 * time.Millisecond,
		Metrics:      m,
	}
	// Watch the lock being held from the start of a run.
	heldSeen := make(chan string, 10)
	url := httpServe(t, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	r.hold = nil
	d := startDaemon(t, s, "demo", "pg1", r, nil, o)
	// etcd_up is there from the first probe, at the start of Run (the
	// archive metrics moved to package daemon, tested there).
	var before string
	for i := 0; i < 50; i++ {
		if _, before = get(t, url); strings.Contains(before, scheduler.MetricEtcdUp+" 1") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, name := range []string{scheduler.MetricRuns, scheduler.MetricHeld, scheduler.MetricEtcdUp + " 1"} {
		if !strings.Contains(before, name) {
			t.Errorf("metrics before a run lack %q", name)
		}
	}
	go func() {
		for i := 0; i < 100; i++ {
			_, b := fetch(url)
			if strings.Contains(b, scheduler.MetricHeld+`{job_name="nightly"} 1`) {
				heldSeen <- b
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	var after string
	for i := 0; i < 100; i++ {
		_, after = get(t, url)
		// The lock is released just after the run is counted.
		if strings.Contains(after, scheduler.MetricRuns+`{job_name="nightly",result="succeeded"} 1`) &&
			strings.Contains(after, scheduler.MetricHeld+`{job_name="nightly"} 0`) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	d.stop()
	for _, want := range []string{
		scheduler.MetricRuns + `{job_name="nightly",result="succeeded"} 1`,
		scheduler.MetricRuns + `{job_name="nightly",result="failed"} 0`,
		scheduler.MetricLastSuccess + `{job_name="nightly"} 1.`,
		scheduler.MetricDuration + `_count{job_name="nightly"} 1`,
		scheduler.MetricBytes + `{job_name="nightly"} 42`,
		scheduler.MetricHeld + `{job_name="nightly"} 0`,
		scheduler.MetricEtcdUp + " 1",
	} {
		if !strings.Contains(after, want) {
			t.Errorf("metrics after a run lack %q", want)
		}
	}
	if strings.Contains(before, scheduler.MetricLastSuccess+"{") {
		t.Error("last success set before any run")
	}
	select {
	case <-heldSeen:
	case <-time.After(time.Second):
		t.Error("lock_held never seen at 1 during the run")
	}
}

func httpServe(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String() + "/"
}

func get(t *testing.T, url string) (int, string) {
	code, body, err := fetchErr(url)
	if err != nil {
		t.Errorf("GET %s: %v", url, err)
	}
	return code, body
}

func fetch(url string) (int, string) {
	code, body, _ := fetchErr(url)
	return code, body
}

func fetchErr(url string) (int, string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// Shutdown mid-run (SIGTERM in the daemon): the run's context ends, the
// lock is released at once (not left to expire), the aborted run is
// recorded as an attempt without a final record, and another member then
// completes the scheduled time.
func TestShutdownAbortsAndReleases(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.Options{})
	writeCluster(t, s.Client(t), "demo", threeNodes())
	r := newRecorder(200 * time.Millisecond)
	r.holdFirst("pg2")
	logs := &logBuffer{}
	o := scheduler.Options{
		Jobs:            []scheduler.Job{{Name: "backup", Kind: "backup", Schedule: "*/3 * * * * *", RunOn: scheduler.Replica, MaxLag: 1 << 20, Window: 30 * time.Second}},
		LockTTL:         30 * time.Second, // far longer than the test waits: only a release frees it
		TakeoverTimeout: time.Second,
		PollInterval:    100 * time.Millisecond,
	}
	pg2 := startDaemon(t, s, "demo", "pg2", r, logs, o)
	pg3 := startDaemon(t, s, "demo", "pg3", r, logs, o)
	tick := r.waitHeld(t, "pg2")
	lock := scheduler.LockName("backup", tick)
	if held, err := pg3.ha.Held(tctx(t, 5*time.Second), lock); err != nil || !held {
		t.Fatalf("lock %s during the run: held=%v err=%v", lock, held, err)
	}
	stopped := time.Now()
	pg2.stop()
	if d := time.Since(stopped); d > 5*time.Second {
		t.Errorf("stopping took %s with a run in progress", d)
	}
	if held, err := pg3.ha.Held(tctx(t, 5*time.Second), lock); err != nil || held {
		t.Errorf("lock %s after shutdown: held=%v err=%v, want released", lock, held, err)
	}
	var ev *event
	for _, e := range r.snapshot() {
		if e.member == "pg2" && e.scheduled.Equal(tick) {
			ev = &e
		}
	}
	if ev == nil || ev.err == nil || ev.end.IsZero() {
		t.Fatalf("pg2's run was not ended by the shutdown: %+v", ev)
	}
	var att scheduler.Run
	found, err := pg3.ha.Get(tctx(t, 5*time.Second), scheduler.AttemptName("backup", tick), &att)
	if err != nil || !found || att.Status != scheduler.StatusAborted || att.Node != "pg2" {
		t.Errorf("attempt record after shutdown: found=%v err=%v %+v, want aborted by pg2", found, err, att)
	}
	// pg3 takes the scheduled time over and completes it once.
	pgtest.WaitFor(t, 20*time.Second, "pg3 to complete the aborted scheduled time", func() (bool, error) {
		rec, ok := finalRecords(t, pg3.ha, "backup")[tick.Unix()]
		return ok && rec.Node == "pg3" && rec.Status == scheduler.StatusSucceeded, nil
	})
	pg3.stop()
	if !strings.Contains(logs.String(), "job aborted by shutdown") {
		t.Errorf("abort not logged:\n%s", logs.String())
	}
}

// A backup begun on a replica that is promoted mid-run is aborted (its
// result would be no backup to keep) and the scheduled time is retried on
// the member the new topology prefers, once.
func TestPromotedMidRunIsRetriedElsewhere(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.Options{})
	cli := s.Client(t)
	writeCluster(t, cli, "demo", threeNodes())
	r := newRecorder(200 * time.Millisecond)
	r.holdFirst("pg2")
	logs := &logBuffer{}
	o := scheduler.Options{
		Jobs:            []scheduler.Job{{Name: "backup", Kind: "backup", Schedule: "*/3 * * * * *", RunOn: scheduler.PreferReplica, MaxLag: 1 << 20, Window: 30 * time.Second}},
		LockTTL:         5 * time.Second,
		TakeoverTimeout: 20 * time.Second, // longer than the test: only the retry may run it
		PollInterval:    100 * time.Millisecond,
		RetryDelay:      500 * time.Millisecond,
	}
	var ds []*daemon
	for _, m := range []string{"pg1", "pg2", "pg3"} {
		ds = append(ds, startDaemon(t, s, "demo", m, r, logs, o))
	}
	tick := r.waitHeld(t, "pg2")
	// Patroni promotes pg2 (a switchover): pg2 leads, pg1 follows. pg2 is
	// still eligible under prefer-replica (as the primary, last in line),
	// so only the change of its own role may stop the run.
	writeCluster(t, cli, "demo", map[string]*string{
		"leader":      str("pg2"),
		"members/pg2": str(member(5433, "master", "running", leaderPos, "")),
		"members/pg1": str(member(5432, "replica", "running", leaderPos-100, "")),
	})
	var rec scheduler.Run
	pgtest.WaitFor(t, 20*time.Second, "the scheduled time to be retried and recorded", func() (bool, error) {
		got, ok := finalRecords(t, ds[0].ha, "backup")[tick.Unix()]
		rec = got
		return ok, nil
	})
	for _, d := range ds {
		d.stop()
	}
	if rec.Status != scheduler.StatusSucceeded || rec.Node != "pg1" || rec.Role != "replica" || rec.Attempt != 2 {
		t.Errorf("record %+v, want attempt 2 succeeded on pg1 as a replica", rec)
	}
	var pg2Run *event
	for _, e := range r.snapshot() {
		if e.member == "pg2" && e.scheduled.Equal(tick) {
			pg2Run = &e
		}
	}
	if pg2Run == nil || pg2Run.err == nil || !strings.Contains(pg2Run.err.Error(), "topology") {
		t.Errorf("pg2's run was not stopped by the promotion: %+v", pg2Run)
	}
	if done := r.completed()[tick.Unix()]; len(done) != 1 || done[0] != "pg1" {
		t.Errorf("scheduled time completed by %q, want once by pg1", done)
	}
	if !strings.Contains(logs.String(), "role replica -> master") {
		t.Errorf("the abort does not say why:\n%s", logs.String())
	}
}

// A backup commits while etcd is frozen (SIGSTOP) past the lock's TTL:
// its record cannot be written under the lock. The result is not
// undone, and the next attempt finds it in the repository and records
// it instead of running the job again: exactly one committed result.
func TestCommittedWhileEtcdPausedIsRecordedOnce(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.Options{})
	writeCluster(t, s.Client(t), "demo", threeNodes())
	r := newRecorder(100 * time.Millisecond)
	var once sync.Once
	var paused time.Time
	resumed := make(chan struct{})
	r.beforeCommit = func(member string, tick time.Time) {
		once.Do(func() {
			paused = tick
			s.Pause(t)
			time.Sleep(7 * time.Second)
			s.Resume(t)
			close(resumed)
		})
	}
	logs := &logBuffer{}
	o := scheduler.Options{
		Jobs:         []scheduler.Job{{Name: "backup", Kind: "backup", Schedule: "*/2 * * * * *", RunOn: scheduler.Primary, Window: 40 * time.Second}},
		LockTTL:      2 * time.Second,
		PollInterval: 100 * time.Millisecond,
		RetryDelay:   200 * time.Millisecond,
	}
	d := startDaemon(t, s, "demo", "pg1", r, logs, o)
	var rec scheduler.Run
	select {
	case <-resumed:
	case <-time.After(30 * time.Second):
		t.Fatal("no run reached its commit")
	}
	pgtest.WaitFor(t, 40*time.Second, "the paused scheduled time to be recorded", func() (bool, error) {
		got, ok := finalRecords(t, d.ha, "backup")[paused.Unix()]
		rec = got
		return ok, nil
	})
	d.stop()
	done := r.completed()[paused.Unix()]
	runs := 0
	for _, ev := range r.snapshot() {
		if ev.scheduled.Equal(paused) {
			runs++
		}
	}
	if len(done) != 1 || runs != 1 {
		t.Errorf("scheduled time %s: %d runs, committed by %q; want one run", paused.Format(time.TimeOnly), runs, done)
	}
	if rec.Status != scheduler.StatusSucceeded || rec.BackupID != "pg1-"+fmt.Sprint(paused.Unix()) {
		t.Errorf("record %+v, want the committed result", rec)
	}
	t.Logf("record: adopted=%v attempt=%d", rec.Adopted, rec.Attempt)
	if strings.Contains(logs.String(), "discarded") {
		t.Errorf("a result was said to be discarded:\n%s", logs.String())
	}
	if t.Failed() {
		t.Logf("logs:\n%s", logs.String())
	}
}

// The first member in line (pg2 under prefer-replica) has no daemon: the
// other replica, pg3, takes every scheduled time over; the primary, last
// in line, waits a stagger longer and never has to.
func TestTakeoverFollowsRanking(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.Options{})
	writeCluster(t, s.Client(t), "demo", threeNodes())
	r := newRecorder(100 * time.Millisecond)
	logs := &logBuffer{}
	o := scheduler.Options{
		Jobs:            []scheduler.Job{{Name: "backup", Kind: "backup", Schedule: "*/2 * * * * *", RunOn: scheduler.PreferReplica, MaxLag: 1 << 20, Window: 20 * time.Second}},
		LockTTL:         2 * time.Second,
		TakeoverTimeout: time.Second,
		TakeoverStagger: time.Second,
		PollInterval:    100 * time.Millisecond,
	}
	pg1 := startDaemon(t, s, "demo", "pg1", r, logs, o)
	startDaemon(t, s, "demo", "pg3", r, logs, o)
	first := time.Now().Add(time.Second).Truncate(2 * time.Second).Add(2 * time.Second)
	const ticks = 8
	last := first.Add((ticks - 1) * 2 * time.Second)
	pgtest.WaitFor(t, time.Until(last)+30*time.Second, "the last tick to be recorded", func() (bool, error) {
		_, ok := finalRecords(t, pg1.ha, "backup")[last.Unix()]
		return ok, nil
	})
	recs := finalRecords(t, pg1.ha, "backup")
	byNode := map[string]int{}
	for tick := first; !tick.After(last); tick = tick.Add(2 * time.Second) {
		rec, ok := recs[tick.Unix()]
		if !ok {
			t.Errorf("%s: no record", tick.Format(time.TimeOnly))
			continue
		}
		byNode[rec.Node]++
	}
	t.Logf("%d takeovers by node: %v", ticks, byNode)
	if byNode["pg3"] != ticks {
		t.Errorf("takeovers by node %v, want all %d by pg3 (the replica next in line)", byNode, ticks)
	}
}

// etcd freezes while a job runs: /healthz turns 503 and pgkeep_etcd_up 0
// within a few poll intervals (the probe), and at the moment the lock is
// reported lost, lock_held is 0 already (not only once the run has
// stopped and its clean-up timed out).
func TestLockLostHealthAtOnce(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.Options{})
	writeCluster(t, s.Client(t), "demo", threeNodes())
	r := newRecorder(100 * time.Millisecond)
	r.holdFirst("pg1")
	logs := &logBuffer{}
	reg := prometheus.NewRegistry()
	o := scheduler.Options{
		Jobs:         []scheduler.Job{{Name: "backup", Kind: "backup", Schedule: "*/2 * * * * *", RunOn: scheduler.Primary, Window: 30 * time.Second}},
		LockTTL:      3 * time.Second,
		PollInterval: 200 * time.Millisecond,
		Metrics:      scheduler.NewMetrics(reg),
	}
	h, err := ha.Connect(tctx(t, 10*time.Second), ha.Options{Endpoints: []string{s.Endpoint}, Scope: "demo", Identity: "pg1",
		DialTimeout: 2 * time.Second, RequestTimeout: time.Second, Logger: logs.logger("pg1")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	o.HA, o.Member, o.Runner, o.Logger = h, "pg1", memberRunner{r, "pg1"}, logs.logger("pg1")
	sc, err := scheduler.New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); sc.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	metrics := httpServe(t, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	health := httpServe(t, sc.HealthHandler())
	r.waitHeld(t, "pg1")
	time.Sleep(500 * time.Millisecond)
	if _, m := get(t, metrics); !strings.Contains(m, scheduler.MetricHeld+`{job_name="backup"} 1`) || !strings.Contains(m, scheduler.MetricEtcdUp+" 1") {
		t.Fatalf("during the run, before the pause:\n%s", m)
	}
	s.Pause(t)
	defer s.Resume(t)
	paused := time.Now()
	// The probe notices within its timeout plus a poll interval.
	pgtest.WaitFor(t, 5*time.Second, "/healthz to answer 503", func() (bool, error) {
		code, _ := fetch(health)
		return code == 503, nil
	})
	t.Logf("/healthz 503 %s after the pause", time.Since(paused).Round(100*time.Millisecond))
	pgtest.WaitFor(t, 15*time.Second, "the lock to be reported lost", func() (bool, error) {
		return strings.Contains(logs.String(), `msg="lock lost"`), nil
	})
	_, m := get(t, metrics)
	code, _ := fetch(health)
	if !strings.Contains(m, scheduler.MetricHeld+`{job_name="backup"} 0`) || !strings.Contains(m, scheduler.MetricEtcdUp+" 0") || code != 503 {
		t.Errorf("right after \"lock lost\" (%s after the pause): health %d, metrics:\n%s", time.Since(paused).Round(100*time.Millisecond), code, m)
	}
	s.Resume(t)
	pgtest.WaitFor(t, 10*time.Second, "/healthz to answer 200 again", func() (bool, error) {
		code, _ := fetch(health)
		return code == 200, nil
	})
}

// pg2, first in line, runs with a clock 6 s ahead: it starts no run
// before the scheduled time on the real clock (the median of the three
// daemons' clocks), and it warns about the skew.
func TestFastClockDoesNotStartEarly(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.Options{})
	writeCluster(t, s.Client(t), "demo", threeNodes())
	r := newRecorder(100 * time.Millisecond)
	logs := &logBuffer{}
	o := scheduler.Options{
		Jobs:            []scheduler.Job{{Name: "backup", Kind: "backup", Schedule: "*/2 * * * * *", RunOn: scheduler.PreferReplica, MaxLag: 1 << 20, Window: 20 * time.Second}},
		LockTTL:         2 * time.Second,
		TakeoverTimeout: 20 * time.Second,
		PollInterval:    100 * time.Millisecond,
	}
	var ds []*daemon
	for _, m := range []string{"pg1", "pg2", "pg3"} {
		om := o
		if m == "pg2" {
			om.Clock = func() time.Time { return time.Now().Add(6 * time.Second) }
		}
		ds = append(ds, startDaemon(t, s, "demo", m, r, logs, om))
	}
	time.Sleep(12 * time.Second)
	for _, d := range ds {
		d.stop()
	}
	runs := 0
	for _, ev := range r.snapshot() {
		runs++
		if early := ev.scheduled.Sub(ev.start); early > 200*time.Millisecond {
			t.Errorf("%s started the run of %s %s early", ev.member, ev.scheduled.Format(time.TimeOnly), early.Round(10*time.Millisecond))
		}
	}
	// Six times come due; pg2 (first in line) must not skip those its own
	// clock had passed when it started but the cluster's had not.
	if runs < 4 {
		t.Errorf("only %d runs in 12 s of a job every 2 s:\n%s", runs, logs.String())
	}
	if !strings.Contains(logs.String(), "clock skew") {
		t.Errorf("no daemon warned about pg2's clock:\n%s", logs.String())
	}
}

// A scheduled time that comes due while a starting daemon waits for the
// peers' clocks (three heartbeats, three poll intervals here) is still run
// by it, the first in line, not skipped and left to a takeover.
func TestScheduledTimeWhileSettlingIsRun(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.Options{})
	writeCluster(t, s.Client(t), "settle", threeNodes())
	r := newRecorder(100 * time.Millisecond)
	o := scheduler.Options{
		Jobs:         []scheduler.Job{{Name: "backup", Kind: "backup", Schedule: "*/2 * * * * *", RunOn: scheduler.PreferReplica, MaxLag: 1 << 20, Window: 20 * time.Second}},
		LockTTL:      2 * time.Second,
		PollInterval: time.Second,
	}
	begun := time.Now()
	d := startDaemon(t, s, "settle", "pg2", r, nil, o)
	first := begun.Truncate(2 * time.Second).Add(2 * time.Second) // before the clocks settle
	pgtest.WaitFor(t, 30*time.Second, "the first scheduled time to be recorded", func() (bool, error) {
		_, ok := finalRecords(t, d.ha, "backup")[first.Unix()]
		return ok, nil
	})
	if rec := finalRecords(t, d.ha, "backup")[first.Unix()]; rec.Node != "pg2" || rec.Status != scheduler.StatusSucceeded {
		t.Errorf("%s: %s on %s, want a success on pg2", first.Format(time.TimeOnly), rec.Status, rec.Node)
	}
}

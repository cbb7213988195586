package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/daemon"
	"github.com/pgkeep/pgkeep/internal/etcdtest"
	"github.com/pgkeep/pgkeep/internal/patronitest"
	"github.com/pgkeep/pgkeep/internal/pgtest"
	"github.com/pgkeep/pgkeep/scheduler"
)

// promServer is a Prometheus started by a test on loopback.
type promServer struct {
	url, log string
}

// startPrometheus runs Debian's prometheus on 127.0.0.1 with a temporary
// config and storage directory, scraping targets (host:port) every second.
// It returns once Prometheus scrapes (itself): its scrape manager starts
// scraping only some 5 s after start-up, and the test wants the daemons
// scraped from their first second.
func startPrometheus(t *testing.T, targets ...string) *promServer {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus not found: install Debian's prometheus package (scripts/install-deps.sh)")
	}
	dir := pgtest.TempDir(t)
	quoted := make([]string, len(targets))
	for i, tg := range targets {
		quoted[i] = strconv.Quote(tg)
	}
	port := pgtest.FreePort(t)
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:%d"]
  - job_name: pgkeep
    scrape_interval: 1s
    scrape_timeout: 900ms
    static_configs:
      - targets: [%s]
`, port, strings.Join(quoted, ", "))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &promServer{url: fmt.Sprintf("http://127.0.0.1:%d", port), log: filepath.Join(dir, "prometheus.log")}
	logf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+fmt.Sprintf("127.0.0.1:%d", port))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			t.Logf("--- prometheus ---\n%s", pgtest.Tail(string(b), 3000))
		}
	})
	pgtest.WaitFor(t, 30*time.Second, "prometheus to be ready", func() (bool, error) {
		resp, err := (&http.Client{Timeout: time.Second}).Get(p.url + "/-/ready")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == 200, nil
	})
	p.waitQuery(t, 30*time.Second, `up{job="prometheus"} == 1`)
	return p
}

// promSample is one series of an instant query's answer.
type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

func (s promSample) value(t *testing.T) float64 {
	t.Helper()
	str, _ := s.Value[1].(string)
	v, err := strconv.ParseFloat(str, 64)
	if err != nil {
		t.Fatalf("sample %v: %v", s, err)
	}
	return v
}

// query runs an instant PromQL query; an error when Prometheus refuses it.
func (p *promServer) query(expr string) ([]promSample, error) {
	cl := &http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Get(p.url + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var ans struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil {
		return nil, fmt.Errorf("%s: %w", expr, err)
	}
	if ans.Status != "success" {
		return nil, fmt.Errorf("%s: %s", expr, ans.Error)
	}
	if ans.Data.ResultType == "scalar" {
		var v [2]any
		if err := json.Unmarshal(ans.Data.Result, &v); err != nil {
			return nil, err
		}
		return []promSample{{Value: v}}, nil
	}
	var out []promSample
	if err := json.Unmarshal(ans.Data.Result, &out); err != nil {
		return nil, fmt.Errorf("%s: %w", expr, err)
	}
	return out, nil
}

// waitQuery waits (bounded) until expr returns at least one series.
func (p *promServer) waitQuery(t *testing.T, timeout time.Duration, expr string) []promSample {
	t.Helper()
	var got []promSample
	pgtest.WaitFor(t, timeout, "Prometheus to return "+expr, func() (bool, error) {
		var err error
		got, err = p.query(expr)
		return len(got) > 0, err
	})
	return got
}

// dashboardExprs are the PromQL expressions of every panel of the
// dashboard, with its variables replaced by values that match everything
// (the scrape job and instance) and Grafana's interval by one that holds
// several scrapes.
func dashboardExprs(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []dashPanel `json:"panels"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	r := strings.NewReplacer("$job", ".+", "$instance", ".+", "$__rate_interval", "30s", "$__interval", "5s", "$__range", "5m")
	var out []string
	var walk func([]dashPanel)
	walk = func(ps []dashPanel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				if tg.Expr != "" {
					out = append(out, r.Replace(tg.Expr))
				}
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

type dashPanel struct {
	Title   string `json:"title"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []dashPanel `json:"panels"`
}

// writePatroniLeader writes, under /service/<scope>/, the keys Patroni
// 3.0.2 keeps for a one-member cluster whose leader is member at the
// PostgreSQL c, so that a daemon with daemon.ha: patroni runs
// run_on: primary jobs there.
func writePatroniLeader(t *testing.T, s *etcdtest.Server, scope, member string, c *pgtest.Cluster) {
	t.Helper()
	cli := s.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	prefix := "/service/" + scope + "/"
	m := fmt.Sprintf(`{"conn_url":"postgres://127.0.0.1:%d/postgres","api_url":"http://127.0.0.1:8008/patroni","state":"running","role":"master","version":"3.0.2","xlog_location":%d,"timeline":1}`, c.Port, 100<<20)
	for k, v := range map[string]string{
		"leader":            member,
		"members/" + member: m,
		"status":            fmt.Sprintf(`{"optime":%d}`, 100<<20),
		"initialize":        "7234567890123456789",
		"config":            `{"ttl":30,"loop_wait":10,"retry_timeout":10,"maximum_lag_on_failover":1048576}`,
	} {
		if _, err := cli.Put(ctx, prefix+k, v); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDaemonMetricsPrometheus: a real Prometheus scrapes two daemons
// beside one PostgreSQL 15, one with daemon.ha: none and one with etcd
// (Patroni's keys for a one-member cluster written as Patroni writes
// them). From the first scrape pgkeep_etcd_up is 1 (it used to read 0
// until a job ran); build info, PostgreSQL and archiver metrics are
// there; after the daemons' backups the repository metrics (computed like
// `pgkeep info`) agree with the repository; storage requests are counted;
// and every PromQL expression of configs/grafana-dashboard.json returns
// data from that Prometheus.
func TestDaemonMetricsPrometheus(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs", encrypted: true})
	primary := archivingCluster(t, r, "archive_timeout = 5")
	conn := primary.Conn(t)
	primary.Exec(t, conn, "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)")
	insertBatch(t, conn, 1)
	takeBackup(t, r, primary)

	etcd := etcdtest.Start(t, etcdtest.Options{})
	writePatroniLeader(t, etcd, "metrics", "pg1", primary)

	// Prometheus first, so that it scrapes the daemons from their first
	// second: with a poll interval of 5 s, pgkeep_etcd_up used to read 0
	// for 5 s after start.
	soloPort, haPort := pgtest.FreePort(t), pgtest.FreePort(t)
	soloTarget, haTarget := fmt.Sprintf("127.0.0.1:%d", soloPort), fmt.Sprintf("127.0.0.1:%d", haPort)
	prom := startPrometheus(t, soloTarget, haTarget)
	lockDir := filepath.Join(pgtest.TempDir(t), "lock")
	pgtest.MkdirFor(t, lockDir)
	startMetricsDaemon(t, r, primary, nil, soloPort, "solo", fmt.Sprintf(`  ha: none
  lock_dir: %s
`, lockDir), `    - {name: solo-backup, kind: backup, schedule: "*/20 * * * * *", window: 60s}
`)
	startMetricsDaemon(t, r, primary, etcd, haPort, "pg1", "", `    - {name: ha-verify, kind: verify, schedule: "*/15 * * * * *", run_on: primary, window: 60s}
`)
	started := time.Now()

	// etcd_up: 1 in the first scrape and in every one since.
	got := prom.waitQuery(t, 30*time.Second, scheduler.MetricEtcdUp)
	if len(got) != 1 || got[0].Metric["instance"] != haTarget || got[0].value(t) != 1 {
		t.Errorf("%s right after start: %v, want one series, 1, from %s", scheduler.MetricEtcdUp, got, haTarget)
	}
	t.Logf("first scrape with %s %s after the daemons started", scheduler.MetricEtcdUp, time.Since(started).Round(100*time.Millisecond))

	// Build info and the local PostgreSQL, on both daemons.
	for _, m := range []string{daemon.MetricBuildInfo, daemon.MetricPostgresUp, daemon.MetricArchiveFailed, daemon.MetricArchiveArchived} {
		prom.waitQuery(t, 30*time.Second, "count("+m+") >= 2")
		got, err := prom.query(m)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 {
			t.Errorf("%s: %d series, want one per daemon: %v", m, len(got), got)
		}
		for _, s := range got {
			v := s.value(t)
			switch {
			case m == daemon.MetricBuildInfo && (v != 1 || s.Metric["version"] == "" || s.Metric["revision"] == "" || !strings.HasPrefix(s.Metric["goversion"], "go")):
				t.Errorf("%s: %v", m, s)
			case m == daemon.MetricPostgresUp && v != 1:
				t.Errorf("%s on %s: %v, PostgreSQL is up", m, s.Metric["instance"], v)
			case m == daemon.MetricArchiveFailed && v != 0:
				t.Errorf("%s on %s: %v, nothing failed", m, s.Metric["instance"], v)
			}
		}
	}
	// PostgreSQL archives (archive_timeout 5 s): the timestamp is recent.
	got = prom.waitQuery(t, 30*time.Second, daemon.MetricArchiveLastArchived)
	for _, s := range got {
		if age := time.Since(time.Unix(int64(s.value(t)), 0)); age < -5*time.Second || age > 5*time.Minute {
			t.Errorf("%s on %s: %s ago", daemon.MetricArchiveLastArchived, s.Metric["instance"], age)
		}
	}

	// A daemon backup and a daemon verify succeed.
	prom.waitQuery(t, 3*time.Minute, scheduler.MetricRuns+`{job_name="solo-backup",result="succeeded"} >= 1`)
	prom.waitQuery(t, 2*time.Minute, scheduler.MetricRuns+`{job_name="ha-verify",result="succeeded"} >= 1`)
	runs := localRuns(t, lockDir, "solo-backup")
	if len(runs) == 0 {
		t.Fatal("no recorded backup")
	}
	last := runs[len(runs)-1]

	// The repository metrics catch up with that backup (refreshed after
	// each job, at most every 30 s) and agree with `pgkeep info --json`.
	prom.waitQuery(t, 2*time.Minute, fmt.Sprintf(`%s{instance=%q} >= %d`, daemon.MetricRepoNewestBackup, soloTarget, last.Started.Unix()))
	res := runPgkeep(t, r.env, "", "info", "--json")
	if res.code != 0 {
		t.Fatalf("info: exit %d\n%s", res.code, res.stderr)
	}
	var inf struct {
		Backups []struct {
			ID       string    `json:"id"`
			StopTime time.Time `json:"stop_time"`
			DataSize int64     `json:"data_size"`
		} `json:"backups"`
		RecoveryWindow *struct {
			FirstTime time.Time `json:"first_time"`
		} `json:"recovery_window"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &inf); err != nil {
		t.Fatalf("info --json: %v\n%s", err, res.stdout)
	}
	if len(inf.Backups) < 2 || inf.RecoveryWindow == nil {
		t.Fatalf("info: %d backups, window %v", len(inf.Backups), inf.RecoveryWindow)
	}
	one := func(expr string) float64 {
		t.Helper()
		got, err := prom.query(expr)
		if err != nil || len(got) == 0 {
			t.Fatalf("%s: %v %v", expr, got, err)
		}
		return got[0].value(t)
	}
	first := inf.Backups[0]
	if v := one(`min(` + daemon.MetricRepoOldestBackup + `)`); int64(v) != first.StopTime.Unix() {
		t.Errorf("%s %v, info's oldest backup ended %s", daemon.MetricRepoOldestBackup, v, first.StopTime)
	}
	if v := one(`min(` + daemon.MetricRepoRecoveryWindowStart + `)`); int64(v) != inf.RecoveryWindow.FirstTime.Unix() {
		t.Errorf("%s %v, info's recovery window starts %s", daemon.MetricRepoRecoveryWindowStart, v, inf.RecoveryWindow.FirstTime)
	}
	if v := one(`max(` + daemon.MetricRepoBackups + `)`); v < 2 || v > float64(len(inf.Backups)) {
		t.Errorf("%s %v, info lists %d", daemon.MetricRepoBackups, v, len(inf.Backups))
	}
	if v := one(`min(` + daemon.MetricRepoNewestBackupBytes + `)`); v <= 0 {
		t.Errorf("%s %v", daemon.MetricRepoNewestBackupBytes, v)
	}
	if v := one(`min(` + daemon.MetricRepoSize + `)`); v < float64(first.DataSize)/100 {
		t.Errorf("%s %v", daemon.MetricRepoSize, v)
	}
	start, end := one(`min(`+daemon.MetricRepoRecoveryWindowStart+`)`), one(`max(`+daemon.MetricRepoRecoveryWindowEnd+`)`)
	if end < start {
		t.Errorf("recovery window ends (%v) before it starts (%v)", end, start)
	}
	// The backup and verify read and wrote the repository through the
	// counting wrapper.
	for _, op := range []string{"put", "list", "get"} {
		if v := one(fmt.Sprintf(`sum(%s{op=%q})`, daemon.MetricStorageRequests, op)); v < 1 {
			t.Errorf("%s{op=%q} %v after a backup and a verify", daemon.MetricStorageRequests, op, v)
		}
	}
	// etcd was never reported down, from the first scrape on.
	if v := one(`min_over_time(` + scheduler.MetricEtcdUp + `[10m])`); v != 1 {
		t.Errorf("min_over_time(%s) %v: it read 0 at some scrape", scheduler.MetricEtcdUp, v)
	}
	if v := one(`sum_over_time(up{instance="` + haTarget + `"}[10m]) - count_over_time(` + scheduler.MetricEtcdUp + `[10m])`); v > 1 {
		t.Errorf("%v successful scrapes of the etcd daemon without %s", v, scheduler.MetricEtcdUp)
	}

	// Every expression of the dashboard returns data.
	exprs := dashboardExprs(t, "../../configs/grafana-dashboard.json")
	if len(exprs) < 10 {
		t.Fatalf("dashboard: %d expressions", len(exprs))
	}
	for _, e := range exprs {
		got, err := prom.query(e)
		if err != nil {
			t.Errorf("dashboard: %v", err)
			continue
		}
		if len(got) == 0 {
			t.Errorf("dashboard: %s returns no data", e)
		}
	}
}

// startMetricsDaemon runs `pgkeep daemon` beside the PostgreSQL c with
// /metrics on port: against etcd s for the Patroni scope "metrics" that
// writePatroniLeader wrote (as member), or with daemon.ha: none when s is
// nil (extra then holds ha and lock_dir). The etcd daemon polls every 5 s.
func startMetricsDaemon(t *testing.T, r *testRepo, c *pgtest.Cluster, s *etcdtest.Server, port int, member, extra, jobs string) *daemonProc {
	t.Helper()
	base, err := os.ReadFile(r.config)
	if err != nil {
		t.Fatal(err)
	}
	dir := pgtest.TempDir(t)
	d := &daemonProc{node: &patronitest.Node{Name: member}, log: filepath.Join(dir, "daemon.log"), done: make(chan error, 1)}
	d.metrics = fmt.Sprintf("http://127.0.0.1:%d", port)
	cfg := string(base) + fmt.Sprintf(`pgdata: %s
postgres:
  dsn: "host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable"
`, c.DataDir, c.Port)
	poll := "200ms"
	if s != nil {
		cfg += fmt.Sprintf(`etcd:
  endpoints: [%s]
patroni:
  namespace: /service/
  scope: metrics
`, s.Endpoint)
		poll = "5s"
	}
	cfg += fmt.Sprintf(`daemon:
%s  member: %s
  listen: 127.0.0.1:%d
  lock_ttl: 5s
  takeover_timeout: 6s
  poll_interval: %s
  retries: 3
  retry_delay: 2s
  archive_check_interval: 1s
  jobs:
%s`, extra, member, port, poll, jobs)
	d.config = filepath.Join(dir, "pgkeep.yml")
	if err := os.WriteFile(d.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	pgtest.Chown(t, dir)
	return runDaemonProc(t, d)
}

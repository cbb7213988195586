package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pgkeep/pgkeep/daemon"
	"github.com/pgkeep/pgkeep/ha"
	"github.com/pgkeep/pgkeep/internal/patronitest"
	"github.com/pgkeep/pgkeep/internal/pgtest"
	"github.com/pgkeep/pgkeep/internal/testbin"
	"github.com/pgkeep/pgkeep/scheduler"
)

// daemonProc is one `pgkeep daemon` process beside a Patroni node.
type daemonProc struct {
	node    *patronitest.Node
	cmd     *exec.Cmd
	log     string
	config  string
	metrics string
	done    chan error
}

// daemonOpts change a test daemon's configuration.
type daemonOpts struct {
	// lockTTL and takeover are daemon.lock_ttl and takeover_timeout
	// (default 5s and 6s); extra are more YAML lines of the daemon section
	// (indented two spaces).
	lockTTL, takeover string
	extra             string
	// etcd is the endpoint the daemon uses (default the cluster's).
	etcd string
	// env is added to the daemon's environment.
	env []string
}

// startDaemon runs `pgkeep daemon` for node n as the postgres user, with a
// config that adds etcd, Patroni and the daemon's jobs to the repository's.
func startDaemon(t *testing.T, r *testRepo, c *patronitest.Cluster, n *patronitest.Node, jobs string) *daemonProc {
	t.Helper()
	return startDaemonWith(t, r, c, n, jobs, daemonOpts{})
}

func startDaemonWith(t *testing.T, r *testRepo, c *patronitest.Cluster, n *patronitest.Node, jobs string, o daemonOpts) *daemonProc {
	t.Helper()
	if o.lockTTL == "" {
		o.lockTTL = "5s"
	}
	if o.takeover == "" {
		o.takeover = "6s"
	}
	if o.etcd == "" {
		o.etcd = c.Etcd.URL
	}
	base, err := os.ReadFile(r.config)
	if err != nil {
		t.Fatal(err)
	}
	dir := pgtest.TempDir(t)
	d := &daemonProc{node: n, log: filepath.Join(dir, "daemon.log"), done: make(chan error, 1)}
	port := pgtest.FreePort(t)
	d.metrics = fmt.Sprintf("http://127.0.0.1:%d", port)
	cfg := string(base) + fmt.Sprintf(`pgdata: %s
postgres:
  dsn: %q
etcd:
  endpoints: [%s]
patroni:
  namespace: /service/
  scope: %s
daemon:
  member: %s
  listen: 127.0.0.1:%d
  lock_ttl: %s
  takeover_timeout: %s
  poll_interval: 500ms
  retries: 3
  retry_delay: 2s
  archive_check_interval: 1s
%s  jobs:
%s`, n.DataDir, n.DSN(), o.etcd, c.Scope, n.Name, port, o.lockTTL, o.takeover, o.extra, jobs)
	path := filepath.Join(dir, "pgkeep.yml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	d.config = path
	pgtest.Chown(t, dir)
	logf, err := os.Create(d.log)
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(testbin.Pgkeep(t), "--config", path, "daemon")
	d.cmd.Env = append([]string{"PATH=/usr/bin:/bin", "HOME=/tmp", "TZ=UTC"}, o.env...)
	d.cmd.Dir = "/"
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	pgtest.AsPostgres(t, d.cmd)
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait(); logf.Close() }()
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		<-d.done
		d.done <- nil
		if t.Failed() {
			t.Logf("--- daemon on %s ---\n%s", n.Name, pgtest.Tail(d.Log(), 4000))
		}
	})
	return d
}

func (d *daemonProc) Log() string {
	b, _ := os.ReadFile(d.log)
	return string(b)
}

// stop sends SIGTERM and waits (bounded) for a clean exit.
func (d *daemonProc) stop(t *testing.T) {
	t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		d.done <- err
		if err != nil {
			t.Errorf("daemon on %s: exit after SIGTERM: %v\n%s", d.node.Name, err, pgtest.Tail(d.Log(), 2000))
		}
	case <-time.After(30 * time.Second):
		t.Errorf("daemon on %s did not stop within 30s of SIGTERM", d.node.Name)
	}
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	cl := &http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get(url + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// countKeys counts the etcd keys under prefix.
func countKeys(t *testing.T, endpoint, prefix string) int64 {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("count %s: %v", prefix, err)
	}
	return resp.Count
}

// records reads the daemon's final run records of job from etcd, by
// scheduled time.
func records(t *testing.T, h *ha.Client, job string) []scheduler.Run {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	runs, err := scheduler.FinalRuns(ctx, h)
	if err != nil {
		t.Fatalf("read run records: %v", err)
	}
	var out []scheduler.Run
	for _, r := range runs {
		if r.Job == job {
			out = append(out, r)
		}
	}
	return out
}

// waitRecord waits for a successful run of job scheduled after after that
// matches ok, and returns it.
func waitRecord(t *testing.T, h *ha.Client, job string, after time.Time, timeout time.Duration, what string, ok func(scheduler.Run) bool) scheduler.Run {
	t.Helper()
	var got scheduler.Run
	pgtest.WaitFor(t, timeout, what, func() (bool, error) {
		for _, r := range records(t, h, job) {
			if r.Status == scheduler.StatusSucceeded && r.Scheduled.After(after) && ok(r) {
				got = r
				return true, nil
			}
		}
		return false, nil
	})
	return got
}

// walSwitcher keeps the current leader switching WAL segments (what
// archive_timeout does in production), so backups taken on a standby,
// which wait for their last segment to be archived, finish quickly. It
// stops by itself after a bounded number of rounds.
func walSwitcher(t *testing.T, c *patronitest.Cluster) (stop func()) {
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 600; i++ {
			select {
			case <-quit:
				return
			case <-time.After(2 * time.Second):
			}
			for _, n := range c.Nodes {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				conn, err := pgx.Connect(ctx, n.DSN())
				if err == nil {
					conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS ticks (at timestamptz); INSERT INTO ticks VALUES (now()); SELECT pg_switch_wal()")
					conn.Close(ctx)
				}
				cancel()
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(quit); wg.Wait() }) }
}

// TestPatroniDaemon runs `pgkeep daemon` on every node of a real
// three-node Patroni cluster with a backup job every 15 seconds that
// prefers a replica: backups come from a replica, after kill -9 of the
// leader they come from a node right for the new topology, each scheduled
// time has exactly one backup in the repository, one of them restores to
// exactly its rows, the metrics move, and SIGTERM stops every daemon
// cleanly without leaving a lock behind.
func TestPatroniDaemon(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs"})
	etcd := patronitest.StartEtcd(t)
	c := patronitest.New(t, etcd, patronitest.Options{
		Scope: "sched", Nodes: 3, Pgkeep: pgkeepBin(t), PgkeepConfig: r.config,
	})
	ctx := context.Background()
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
		waitRows(t, n, "1 rows=500")
	}
	stopSwitch := walSwitcher(t, c)
	defer stopSwitch()

	h, err := ha.Connect(ctx, ha.Options{Endpoints: []string{etcd.URL}, Scope: c.Scope})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	// Patroni publishes a replica's WAL position in etcd on its next HA
	// loop: until then prefer-replica rightly falls back to the leader.
	// Start the daemons once etcd shows a replica to choose.
	pgtest.WaitFor(t, time.Minute, "etcd to show a streaming replica", func() (bool, error) {
		view, err := h.View(ctx)
		if err != nil {
			return false, err
		}
		name, _ := scheduler.Choose(view, scheduler.PreferReplica, 512<<20)
		return name != "" && name != leader.Name, nil
	})

	// max_lag is wide: walSwitcher moves the leader's position 16 MB every
	// 2 s and Patroni publishes positions once a loop, later under load,
	// so a healthy replica can look 64 MB behind for a moment, and the job
	// then rightly falls back to the leader (this test is about choosing a
	// replica, not about lag, which scheduler's unit tests cover).
	const jobs = `    - {name: backup, kind: backup, schedule: "*/15 * * * * *", run_on: prefer-replica, max_lag: 512MB}
`
	daemons := map[string]*daemonProc{}
	for _, n := range c.Nodes {
		daemons[n.Name] = startDaemon(t, r, c, n, jobs)
	}
	start := time.Now()

	// Two scheduled times with a healthy cluster: each from a replica.
	first := waitRecord(t, h, "backup", start, 2*time.Minute, "a first scheduled backup", func(scheduler.Run) bool { return true })
	second := waitRecord(t, h, "backup", first.Scheduled, time.Minute, "a second scheduled backup", func(scheduler.Run) bool { return true })
	for _, rec := range []scheduler.Run{first, second} {
		if rec.Node == leader.Name || rec.Role != "replica" || rec.BackupID == "" {
			t.Errorf("with two healthy replicas the backup of %s ran on %s (%s), backup %q", rec.Scheduled.Format(time.TimeOnly), rec.Node, rec.Role, rec.BackupID)
		}
	}
	m := scrape(t, daemons[second.Node].metrics)
	for _, want := range []string{
		scheduler.MetricRuns + `{job_name="backup",result="succeeded"}`,
		scheduler.MetricLastSuccess + `{job_name="backup"}`,
		scheduler.MetricDuration + `_count{job_name="backup"}`,
		scheduler.MetricEtcdUp + " 1",
		daemon.MetricArchiveFailed,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics of %s lack %q", second.Node, want)
		}
	}
	if strings.Contains(m, scheduler.MetricRuns+`{job_name="backup",result="succeeded"} 0`) {
		t.Errorf("metrics of %s show no successful run after one:\n%s", second.Node, m)
	}

	// kill -9 of the leader's Patroni and PostgreSQL (its daemon lives on,
	// with nothing to back up).
	old := leader
	lc.Close(ctx)
	c.Kill(old)
	leader = c.WaitLeader(t, 2*time.Minute, old)
	var replica *patronitest.Node
	for _, n := range c.Nodes {
		if n != old && n != leader {
			replica = n
		}
	}
	failover := time.Now()
	lc = mustConn(t, leader)
	insertBatch(t, lc, 2)
	c.WaitStreaming(t, leader, replica, 3*time.Minute)
	waitRows(t, replica, "1,2 rows=1000")
	synced := time.Now()
	// The next backups come from the remaining replica, the one node the
	// new topology prefers.
	after := waitRecord(t, h, "backup", synced, 2*time.Minute, "a backup from "+replica.Name+" after the failover", func(r scheduler.Run) bool {
		return r.Started.After(synced) && r.Node == replica.Name
	})
	if after.Role != "replica" {
		t.Errorf("backup after the failover ran as %s on %s", after.Role, after.Node)
	}
	insertBatch(t, lc, 3) // after that backup ended: not in it
	waitRecord(t, h, "backup", after.Scheduled, time.Minute, "one more scheduled backup", func(scheduler.Run) bool { return true })

	// SIGTERM: every daemon stops cleanly and no lock stays behind.
	for _, d := range daemons {
		d.stop(t)
	}
	stopSwitch()
	if n := countKeys(t, etcd.URL, h.LockKey("")); n != 0 {
		t.Errorf("%d job locks still held after every daemon stopped", n)
	}

	// Exactly one completed backup per scheduled time: the repository's
	// backups are the records' backups, one each, nothing more.
	recs := records(t, h, "backup")
	want := map[string]string{}
	for _, rec := range recs {
		if rec.Status != scheduler.StatusSucceeded {
			t.Logf("scheduled time %s ended %s: %s", rec.Scheduled.Format(time.TimeOnly), rec.Status, rec.Error)
		}
		if rec.Status == scheduler.StatusSucceeded {
			if prev, dup := want[rec.BackupID]; dup {
				t.Errorf("backup %s recorded for %s and %s", rec.BackupID, prev, rec.Scheduled.Format(time.TimeOnly))
			}
			want[rec.BackupID] = rec.Scheduled.Format(time.TimeOnly)
		}
		if rec.Scheduled.After(failover) && rec.Node == old.Name {
			t.Errorf("scheduled time %s ran on the killed leader %s", rec.Scheduled.Format(time.TimeOnly), old.Name)
		}
	}
	var listed []string
	for _, b := range listBackups(t, r) {
		if b.Status == "complete" {
			listed = append(listed, b.ID)
			if _, ok := want[b.ID]; !ok {
				t.Errorf("backup %s is in the repository but no scheduled time recorded it", b.ID)
			}
		}
	}
	if len(listed) != len(want) {
		sort.Strings(listed)
		t.Errorf("%d complete backups in the repository (%v), %d recorded (%v)", len(listed), listed, len(want), want)
	}
	t.Logf("%d scheduled backups recorded; before the failover on %s and %s, after it on %s", len(want), first.Node, second.Node, after.Node)

	// pgkeep status shows the newest run of the job, as recorded: the
	// newest final record, or a newer attempt (SIGTERM may have aborted a
	// run just now).
	newest := recs[len(recs)-1]
	actx, acancel := context.WithTimeout(ctx, 10*time.Second)
	attempts, err := h.List(actx, "attempts/backup/")
	acancel()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range attempts {
		var a scheduler.Run
		if json.Unmarshal(e.Value, &a) == nil && a.Scheduled.After(newest.Scheduled) {
			newest = a
		}
	}
	res := runPgkeep(t, nil, "", "--config", daemons[replica.Name].config, "status", "--json")
	var st struct {
		Patroni struct {
			Jobs []scheduler.Run `json:"jobs"`
		} `json:"patroni"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &st); err != nil || res.code != 0 {
		t.Fatalf("status --json: exit %d %v\n%s%s", res.code, err, res.stdout, res.stderr)
	}
	if j := st.Patroni.Jobs; len(j) != 1 || j[0].Job != "backup" || !j[0].Scheduled.Equal(newest.Scheduled) ||
		j[0].Node != newest.Node || j[0].Status != newest.Status || j[0].BackupID != newest.BackupID {
		t.Errorf("status shows jobs %+v, want the newest record %+v", j, newest)
	}
	if text := runPgkeep(t, nil, "", "--config", daemons[replica.Name].config, "status"); !strings.Contains(text.stdout, newest.Scheduled.UTC().Format(time.RFC3339)) ||
		!strings.Contains(text.stdout, newest.Status) {
		t.Errorf("status text lacks the newest run (%s, %s):\n%s", newest.Scheduled.UTC().Format(time.RFC3339), newest.Status, text.stdout)
	}

	// The backup taken after the failover restores to exactly its rows.
	hba := filepath.Join(pgtest.TempDir(t), "pg_hba.conf")
	if err := os.WriteFile(hba, []byte("local all all trust\nhost all all 127.0.0.1/32 trust\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rc := restoreAndStartConf(t, r, []string{"max_wal_senders = 10", "max_replication_slots = 10", "max_connections = 100", "hba_file = '" + hba + "'"},
		"--backup", after.BackupID, "--target", "immediate", "--target-action", "promote")
	waitRecoveryDone(t, rc, false)
	if got := batches(t, rc); got != "1,2 rows=1000" {
		t.Fatalf("backup %s (scheduled %s, from %s) restored: %s, want 1,2 rows=1000", after.BackupID, after.Scheduled.Format(time.TimeOnly), after.Node, got)
	}
}

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/daemon"
	"github.com/pgkeep/pgkeep/internal/patronitest"
	"github.com/pgkeep/pgkeep/internal/pgtest"
	"github.com/pgkeep/pgkeep/internal/testbin"
	"github.com/pgkeep/pgkeep/scheduler"
)

// startStandaloneDaemon runs `pgkeep daemon` with daemon.ha: none beside
// the single PostgreSQL c, as the postgres user, its locks and records in
// lockDir.
func startStandaloneDaemon(t *testing.T, r *testRepo, c *pgtest.Cluster, name, lockDir, jobs string) *daemonProc {
	t.Helper()
	base, err := os.ReadFile(r.config)
	if err != nil {
		t.Fatal(err)
	}
	dir := pgtest.TempDir(t)
	d := &daemonProc{node: &patronitest.Node{Name: name}, log: filepath.Join(dir, "daemon.log"), done: make(chan error, 1)}
	port := pgtest.FreePort(t)
	d.metrics = fmt.Sprintf("http://127.0.0.1:%d", port)
	cfg := string(base) + fmt.Sprintf(`pgdata: %s
postgres:
  dsn: "host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable"
daemon:
  ha: none
  lock_dir: %s
  member: %s
  listen: 127.0.0.1:%d
  poll_interval: 200ms
  retries: 3
  retry_delay: 2s
  archive_check_interval: 1s
  jobs:
%s`, c.DataDir, c.Port, lockDir, name, port, jobs)
	d.config = filepath.Join(dir, "pgkeep.yml")
	if err := os.WriteFile(d.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	pgtest.Chown(t, dir)
	return runDaemonProc(t, d)
}

// runDaemonProc starts `pgkeep --config d.config daemon` as postgres,
// logging to d.log, killed when the test ends.
func runDaemonProc(t *testing.T, d *daemonProc) *daemonProc {
	t.Helper()
	return runDaemonProcEnv(t, d, nil)
}

// runDaemonProcEnv is runDaemonProc with env added to the daemon's
// environment.
func runDaemonProcEnv(t *testing.T, d *daemonProc, env []string) *daemonProc {
	t.Helper()
	name := d.node.Name
	logf, err := os.Create(d.log)
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(testbin.Pgkeep(t), "--config", d.config, "daemon")
	d.cmd.Env = append([]string{"PATH=/usr/bin:/bin", "HOME=/tmp", "TZ=UTC"}, env...)
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
			t.Logf("--- daemon %s ---\n%s", name, pgtest.Tail(d.Log(), 4000))
		}
	})
	return d
}

// localRuns reads a standalone daemon's final records of job.
func localRuns(t *testing.T, lockDir, job string) []scheduler.Run {
	t.Helper()
	var f struct {
		Runs []scheduler.Run `json:"runs"`
	}
	b, err := os.ReadFile(filepath.Join(lockDir, job+".runs.json"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("%s records: %v", job, err)
	}
	return f.Runs
}

// metricValue is the value of the sample name{labels} in a scrape, 0
// when absent.
func metricValue(t *testing.T, scrape, name, labels string) float64 {
	t.Helper()
	for _, line := range strings.Split(scrape, "\n") {
		if rest, ok := strings.CutPrefix(line, name+"{"+labels+"} "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("metric %s: %q", name, line)
			}
			return v
		}
	}
	return 0
}

var jobStartRE = regexp.MustCompile(`msg="job starting" job=(\S+) scheduled=(\S+)`)

// TestStandaloneDaemonExactlyOnce runs two daemons with daemon.ha: none
// (no etcd, no Patroni) on one host beside one PostgreSQL 15, sharing a
// lock directory, with a backup job every 6 seconds and verify and
// retention jobs. After six backup times: every backup time has exactly
// one complete backup in the repository carrying its job and time, every
// job's time was started by exactly one daemon (the local lock kept the
// other from even starting it), each daemon's /metrics was scraped and
// the succeeded run counters of the two daemons add up to the number of
// times, and `pgkeep status` shows the last runs from the local records.
func TestStandaloneDaemonExactlyOnce(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs", encrypted: true})
	primary := archivingCluster(t, r)
	conn := primary.Conn(t)
	primary.Exec(t, conn, "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)")
	insertBatch(t, conn, 1)
	manual := takeBackup(t, r, primary) // verify's first run has a backup to verify

	lockDir := filepath.Join(pgtest.TempDir(t), "lock")
	pgtest.MkdirFor(t, lockDir)
	jobs := `    - {name: frequent, kind: backup, schedule: "*/6 * * * * *", window: 60s}
    - {name: check, kind: verify, schedule: "3/12 * * * * *", window: 60s}
    - {name: trim, kind: retention, schedule: "9/12 * * * * *", retain_full: 100, window: 60s}
`
	daemons := []*daemonProc{
		startStandaloneDaemon(t, r, primary, "one", lockDir, jobs),
		startStandaloneDaemon(t, r, primary, "two", lockDir, jobs),
	}
	const times = 6
	pgtest.WaitFor(t, 4*time.Minute, fmt.Sprintf("%d recorded backup times", times), func() (bool, error) {
		for _, d := range daemons {
			select {
			case err := <-d.done:
				d.done <- err
				t.Fatalf("daemon %s exited: %v\n%s", d.node.Name, err, pgtest.Tail(d.Log(), 2000))
			default:
			}
		}
		return len(localRuns(t, lockDir, "frequent")) >= times, nil
	})

	// The metrics of both daemons, taken when no run finished in between
	// (the scrape before and after agree with the records).
	var scrapes [2]string
	var runs []scheduler.Run
	sum := func(sc [2]string) float64 {
		return metricValue(t, sc[0], scheduler.MetricRuns, `job_name="frequent",result="succeeded"`) +
			metricValue(t, sc[1], scheduler.MetricRuns, `job_name="frequent",result="succeeded"`)
	}
	pgtest.WaitFor(t, time.Minute, "metrics that agree with the records", func() (bool, error) {
		before := [2]string{scrape(t, daemons[0].metrics), scrape(t, daemons[1].metrics)}
		runs = localRuns(t, lockDir, "frequent")
		scrapes = [2]string{scrape(t, daemons[0].metrics), scrape(t, daemons[1].metrics)}
		return sum(before) == sum(scrapes) && int(sum(scrapes)) == len(runs), nil
	})
	for i, sc := range scrapes {
		for _, m := range []string{scheduler.MetricRuns, scheduler.MetricLastSuccess, scheduler.MetricHeld, daemon.MetricArchiveLastArchived} {
			if !strings.Contains(sc, m) {
				t.Errorf("daemon %d: /metrics has no %s", i, m)
			}
		}
		if strings.Contains(sc, scheduler.MetricEtcdUp) {
			t.Errorf("daemon %d: /metrics has %s without etcd", i, scheduler.MetricEtcdUp)
		}
		for _, res := range []string{"failed", "aborted"} {
			if v := metricValue(t, sc, scheduler.MetricRuns, `job_name="frequent",result="`+res+`"`); v != 0 {
				t.Errorf("daemon %d: %v %s backup runs", i, v, res)
			}
		}
	}
	st := runPgkeep(t, nil, "", "--config", daemons[0].config, "status", "--json")
	var status struct {
		Standalone struct {
			Jobs []scheduler.Run `json:"jobs"`
		} `json:"standalone"`
	}
	if err := json.Unmarshal([]byte(st.stdout), &status); err != nil {
		t.Fatalf("status --json: %v\n%s\n%s", err, st.stdout, st.stderr)
	}
	for _, d := range daemons {
		d.stop(t)
	}
	if len(status.Standalone.Jobs) == 0 {
		t.Errorf("status --json shows no standalone job run:\n%s", st.stdout)
	}

	// Every time's record, once, succeeded, not adopted.
	final := localRuns(t, lockDir, "frequent")
	recorded := map[time.Time]scheduler.Run{}
	for _, run := range final {
		if _, dup := recorded[run.Scheduled]; dup {
			t.Errorf("two records for %s", run.Scheduled)
		}
		recorded[run.Scheduled] = run
		if run.Status != scheduler.StatusSucceeded || run.Adopted || run.BackupID == "" {
			t.Errorf("record %+v", run)
		}
	}
	if len(recorded) < times {
		t.Fatalf("%d backup times recorded, want at least %d", len(recorded), times)
	}
	// The repository: one complete backup per scheduled time, the one its
	// record names; the manual backup has no schedule.
	res := r.run(t, "backup", "list", "--json")
	var rows []struct {
		ID       string `json:"id"`
		Status   string `json:"status"`
		Schedule *struct {
			Job  string    `json:"job"`
			Time time.Time `json:"time"`
		} `json:"schedule"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &rows); err != nil {
		t.Fatalf("backup list --json: %v\n%s", err, res.stdout)
	}
	perTime := map[time.Time][]string{}
	for _, b := range rows {
		if b.Status != "complete" {
			t.Errorf("backup %s is %s", b.ID, b.Status)
			continue
		}
		if b.Schedule == nil {
			if b.ID != manual {
				t.Errorf("backup %s has no schedule", b.ID)
			}
			continue
		}
		if b.Schedule.Job != "frequent" {
			t.Errorf("backup %s: job %q", b.ID, b.Schedule.Job)
		}
		perTime[b.Schedule.Time.UTC()] = append(perTime[b.Schedule.Time.UTC()], b.ID)
	}
	for ts, run := range recorded {
		if ids := perTime[ts.UTC()]; len(ids) != 1 || ids[0] != run.BackupID {
			t.Errorf("scheduled time %s: backups %v, record names %s", ts, ids, run.BackupID)
		}
	}
	for ts, ids := range perTime {
		if len(ids) != 1 {
			t.Errorf("scheduled time %s: %d backups %v", ts, len(ids), ids)
		}
	}
	// Each (job, time) was started by exactly one daemon, once.
	starts := map[string][]string{}
	for _, d := range daemons {
		for _, m := range jobStartRE.FindAllStringSubmatch(d.Log(), -1) {
			starts[m[1]+"@"+m[2]] = append(starts[m[1]+"@"+m[2]], d.node.Name)
		}
	}
	perJob := map[string]int{}
	for k, who := range starts {
		perJob[strings.SplitN(k, "@", 2)[0]]++
		if len(who) != 1 {
			t.Errorf("%s started %d times, by %v", k, len(who), who)
		}
	}
	if perJob["frequent"] < len(recorded) {
		t.Errorf("%d backup starts logged for %d recorded times", perJob["frequent"], len(recorded))
	}
	for _, job := range []string{"check", "trim"} {
		rs := localRuns(t, lockDir, job)
		if len(rs) == 0 || perJob[job] == 0 {
			t.Errorf("%s: %d records, %d starts", job, len(rs), perJob[job])
		}
		for _, run := range rs {
			if run.Status != scheduler.StatusSucceeded {
				t.Errorf("%s: record %+v", job, run)
			}
		}
	}
	t.Logf("%d backup times, starts per job %v, daemon one ran %v and two %v backups", len(recorded), perJob,
		metricValue(t, scrapes[0], scheduler.MetricRuns, `job_name="frequent",result="succeeded"`),
		metricValue(t, scrapes[1], scheduler.MetricRuns, `job_name="frequent",result="succeeded"`))
}

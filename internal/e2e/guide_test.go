package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.yaml.in/yaml/v3"

	"github.com/pgkeep/pgkeep/internal/patronitest"
	"github.com/pgkeep/pgkeep/internal/pgtest"
	"github.com/pgkeep/pgkeep/internal/s3test"
)

// guide is docs/patroni-guide.md, split into its numbered steps.
type guide struct{ text string }

func readGuide(t *testing.T) guide {
	t.Helper()
	b, err := os.ReadFile("../../docs/patroni-guide.md")
	if err != nil {
		t.Fatal(err)
	}
	return guide{string(b)}
}

// step is the text of "## n. …" up to the next heading of that level.
func (g guide) step(t *testing.T, n int) string {
	t.Helper()
	head := fmt.Sprintf("\n## %d. ", n)
	i := strings.Index(g.text, head)
	if i < 0 {
		t.Fatalf("docs/patroni-guide.md has no step %d", n)
	}
	s := g.text[i+1:]
	if j := strings.Index(s[3:], "\n## "); j >= 0 {
		s = s[:j+3]
	}
	return s
}

// says fails the test unless step n of the guide holds snippet verbatim:
// the test runs the command it adapts from there, so a guide edited
// without the test (or the reverse) fails.
func (g guide) says(t *testing.T, n int, snippet string) {
	t.Helper()
	if !strings.Contains(g.step(t, n), snippet) {
		t.Fatalf("docs/patroni-guide.md step %d no longer says %q: update the guide and this test together", n, snippet)
	}
}

// yamlBlock is the first ```yaml block of step n.
func (g guide) yamlBlock(t *testing.T, n int) string {
	t.Helper()
	s := g.step(t, n)
	i := strings.Index(s, "```yaml\n")
	if i < 0 {
		t.Fatalf("step %d has no yaml block", n)
	}
	s = s[i+len("```yaml\n"):]
	return s[:strings.Index(s, "```")]
}

// TestPatroniGuide follows docs/patroni-guide.md step by step on three real
// Patroni 3.0.2 nodes, etcd and MinIO, all on 127.0.0.1: the guide's
// commands run in order with the test's paths and ports (each is first
// checked to be in the guide verbatim), pgkeep.yml is the guide's own
// block with only the host-specific values replaced, S3 credentials come
// only from the postgres user's ~/.aws/credentials as step 3 says.
func TestPatroniGuide(t *testing.T) {
	g := readGuide(t)
	ctx := context.Background()
	work := pgtest.TempDir(t)
	s3 := s3test.Start(t)
	bucket := fmt.Sprintf("guide-%d", os.Getpid())
	s3.CreateBucket(t, bucket)
	etcd := patronitest.StartEtcd(t)

	// Step 1, the package, is skipped: the test binary stands in for
	// /usr/bin/pgkeep (the .deb is tested on its own). `pgkeep version`
	// still answers.
	g.says(t, 1, "pgkeep version")
	if res := runPgkeep(t, nil, "", "version"); res.code != 0 || res.stdout == "" {
		t.Fatalf("pgkeep version: exit %d %s%s", res.code, res.stdout, res.stderr)
	}

	// Step 2: one key pair.
	g.says(t, 2, "pgkeep keygen --output /etc/pgkeep/identity.txt")
	identity := filepath.Join(work, "identity.txt")
	pgtest.Chown(t, work)
	res := runPgkeep(t, nil, "", "keygen", "--output", identity)
	recipient := strings.TrimSpace(res.stdout)
	if res.code != 0 || !strings.HasPrefix(recipient, "age1") {
		t.Fatalf("keygen: exit %d %s%s", res.code, res.stdout, res.stderr)
	}
	if fi, err := os.Stat(identity); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity: %v %v, want mode 0600", err, fi)
	}

	// The cluster's files are written now (patronitest.New), started in
	// step 6; its directory is the postgres user's HOME for Patroni and
	// everything Patroni runs.
	pgkeepYML := filepath.Join(work, "pgkeep-%s.yml")
	c := patronitest.New(t, etcd, patronitest.Options{Scope: "main", Nodes: 3, Pgkeep: pgkeepBin(t),
		PgkeepConfig: fmt.Sprintf(pgkeepYML, "main-n1")})
	home := filepath.Dir(c.Nodes[0].Config)

	// Step 3: S3 credentials in the postgres user's ~/.aws/credentials
	// only: neither Patroni's nor the commands' environment has any.
	g.says(t, 3, "~postgres/.aws/credentials")
	g.says(t, 3, "aws_access_key_id = AKIA")
	aws := filepath.Join(home, ".aws")
	if err := os.MkdirAll(aws, 0o700); err != nil {
		t.Fatal(err)
	}
	creds := fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", s3.AccessKey, s3.SecretKey)
	if err := os.WriteFile(filepath.Join(aws, "credentials"), []byte(creds), 0o600); err != nil {
		t.Fatal(err)
	}
	pgtest.Chown(t, aws)
	env := []string{"HOME=" + home}

	// Step 4: the guide's pgkeep.yml, host-specific values replaced.
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(g.yamlBlock(t, 4)), &doc); err != nil {
		t.Fatalf("step 4's pgkeep.yml is not YAML: %v", err)
	}
	set := func(m map[string]any, path string, v any) {
		keys := strings.Split(path, ".")
		for _, k := range keys[:len(keys)-1] {
			sub, ok := m[k].(map[string]any)
			if !ok {
				t.Fatalf("step 4's pgkeep.yml has no %s", path)
			}
			m = sub
		}
		if _, ok := m[keys[len(keys)-1]]; !ok && !strings.HasPrefix(path, "s3.") && path != "daemon.poll_interval" {
			t.Fatalf("step 4's pgkeep.yml has no %s", path)
		}
		m[keys[len(keys)-1]] = v
	}
	configs := map[string]string{}
	for _, n := range c.Nodes {
		set(doc, "repository", "s3://"+bucket+"/main")
		set(doc, "s3.region", s3.Region)
		set(doc, "s3.endpoint", s3.Endpoint)
		set(doc, "s3.path_style", true)
		set(doc, "encryption.recipients", []string{recipient})
		set(doc, "encryption.identity_file", identity)
		set(doc, "pgdata", n.DataDir)
		set(doc, "postgres.dsn", fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=postgres-secret dbname=postgres sslmode=disable", n.PGPort))
		set(doc, "etcd.endpoints", []string{etcd.URL})
		set(doc, "patroni.scope", c.Scope)
		set(doc, "daemon.member", n.Name)
		set(doc, "daemon.listen", fmt.Sprintf("127.0.0.1:%d", pgtest.FreePort(t)))
		set(doc, "daemon.poll_interval", "500ms")
		b, err := yaml.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		configs[n.Name] = fmt.Sprintf(pgkeepYML, n.Name)
		if err := os.WriteFile(configs[n.Name], b, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	pgtest.Chown(t, work)
	pk := func(n *patronitest.Node, args ...string) result {
		t.Helper()
		return runPgkeep(t, env, "", append([]string{"--config", configs[n.Name]}, args...)...)
	}
	mustPK := func(n *patronitest.Node, args ...string) string {
		t.Helper()
		res := pk(n, args...)
		if res.code != 0 {
			t.Fatalf("pgkeep %v on %s: exit %d\n%s%s", args, n.Name, res.code, res.stdout, res.stderr)
		}
		return res.stdout
	}
	g.says(t, 4, "sudo -u postgres pgkeep config check")
	g.says(t, 4, "sudo -u postgres pgkeep config show")
	// Before Patroni's first start the data directory does not exist:
	// the guide says config check reports exactly that, and passes after
	// step 6.
	g.says(t, 4, "no such file or directory` until Patroni's first")
	for _, n := range c.Nodes {
		if res := pk(n, "config", "check"); res.code != 2 || !strings.Contains(res.stderr, "pgdata "+n.DataDir+": no such file or directory") {
			t.Fatalf("config check before the cluster exists: exit %d\n%s%s", res.code, res.stdout, res.stderr)
		}
	}
	if out := mustPK(c.Nodes[0], "config", "show"); strings.Contains(out, "postgres-secret") || strings.Contains(out, s3.SecretKey) {
		t.Fatalf("config show printed a secret:\n%s", out)
	}

	// Step 5: repo init, once, before Patroni's first start, no --pgdata.
	g.says(t, 5, "sudo -u postgres pgkeep repo init       # on pg1; no --pgdata")
	mustPK(c.Nodes[0], "repo", "init")

	// Step 6: patroni.yml holds configs/patroni.yml's pgkeep settings
	// (the harness writes them, pointing at the test binary and config).
	example, err := os.ReadFile("../../configs/patroni.yml")
	if err != nil {
		t.Fatal(err)
	}
	patroniYML, err := os.ReadFile(c.Nodes[0].Config)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`archive_mode: "on"`, " wal-push %p\"", " wal-fetch %f %p\"", "create_replica_methods: [pgkeep, basebackup]",
		" create-replica\n", "keep_data: true", "no_leader: true", "wal_log_hints: \"on\"", "use_pg_rewind: true"} {
		if !strings.Contains(string(example), want) || !strings.Contains(string(patroniYML), want) {
			t.Fatalf("configs/patroni.yml and the test's patroni.yml must both have %q", want)
		}
	}
	g.says(t, 6, "systemctl start patroni              # pg1: initdb, becomes leader, starts archiving")
	c.StartNode(t, c.Nodes[0])
	leader := c.WaitLeader(t, 2*time.Minute)
	g.says(t, 6, "patronictl -c /etc/patroni/config.yml list")
	if out := c.Patronictl(t, leader, "list"); !strings.Contains(out, leader.Name) {
		t.Fatalf("patronictl list: %s", out)
	}
	lc := mustConn(t, leader)
	execSQL(t, lc, "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)")
	insertBatch(t, lc, 1)
	g.says(t, 6, "systemctl start patroni              # pg2, then pg3")
	g.says(t, 6, "no backup in the repository yet … falling back to the next method")
	for _, n := range c.Nodes[1:] {
		c.StartNode(t, n)
		c.WaitStreaming(t, leader, n, 3*time.Minute)
		if !strings.Contains(n.Log(), "no backup in the repository yet") || !strings.Contains(n.Log(), "falling back to the next method") {
			t.Fatalf("%s: Patroni's log does not say what step 6 says:\n%s", n.Name, pgtest.Tail(n.Log(), 3000))
		}
	}

	g.says(t, 6, "Now `sudo -u postgres pgkeep config check` exits 0")
	for _, n := range c.Nodes {
		mustPK(n, "config", "check")
	}

	// Step 7: the daemon on every node (the unit's command, without
	// systemd), then /healthz.
	g.says(t, 7, "systemctl enable --now pgkeep-daemon")
	g.says(t, 7, "curl -s 127.0.0.1:9187/healthz")
	var daemons []*daemonProc
	for _, n := range c.Nodes {
		d := &daemonProc{node: n, config: configs[n.Name], log: filepath.Join(work, n.Name+"-daemon.log"), done: make(chan error, 1)}
		var listen struct {
			Daemon struct {
				Listen string `yaml:"listen"`
			} `yaml:"daemon"`
		}
		b, _ := os.ReadFile(d.config)
		if err := yaml.Unmarshal(b, &listen); err != nil {
			t.Fatal(err)
		}
		d.metrics = "http://" + listen.Daemon.Listen
		daemons = append(daemons, runDaemonProcEnv(t, d, env))
	}
	for _, d := range daemons {
		pgtest.WaitFor(t, time.Minute, d.node.Name+"'s daemon /healthz to say ok", func() (bool, error) {
			resp, err := (&http.Client{Timeout: 2 * time.Second}).Get(d.metrics + "/healthz")
			if err != nil {
				return false, nil
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode == 200 && strings.TrimSpace(string(b)) == "ok", nil
		})
	}

	// Step 8: check, the first backup, backup list, status, on the leader;
	// then a replica re-initialized from the repository.
	g.says(t, 8, "sudo -u postgres pgkeep check")
	g.says(t, 8, "sudo -u postgres pgkeep backup       # or wait for the nightly job")
	g.says(t, 8, "sudo -u postgres pgkeep backup list")
	g.says(t, 8, "sudo -u postgres pgkeep status")
	if out := mustPK(leader, "check"); !strings.Contains(out, "archived") {
		t.Fatalf("check: %s", out)
	}
	insertBatch(t, lc, 2)
	id := strings.TrimSpace(mustPK(leader, "backup"))
	if out := mustPK(leader, "backup", "list"); !strings.Contains(out, id) {
		t.Fatalf("backup list does not show %s:\n%s", id, out)
	}
	if out := mustPK(leader, "status"); !strings.Contains(out, leader.Name) || !strings.Contains(out, "archiv") {
		t.Fatalf("status:\n%s", out)
	}
	g.says(t, 8, "patronictl reinit main pg3")
	g.says(t, 8, "pgkeep create-replica: restored backup …")
	var third *patronitest.Node
	for _, n := range c.Nodes {
		if n != leader {
			third = n
		}
	}
	c.Patronictl(t, third, "reinit", c.Scope, third.Name, "--force")
	pgtest.WaitFor(t, 3*time.Minute, third.Name+" re-created from the repository", func() (bool, error) {
		return strings.Contains(third.Log(), "pgkeep create-replica: restored backup "+id), nil
	})
	c.WaitStreaming(t, leader, third, 3*time.Minute)
	waitRows(t, third, "1,2 rows=1000")
	insertBatch(t, lc, 3) // after the backup: not in a restore to "immediate"
	lc.Close(ctx)

	// Step 9: the restore drill, on a replica, into a scratch directory,
	// archive mode off, started on another port with the guide's -o.
	g.says(t, 9, "sudo -u postgres pgkeep restore --pgdata /var/tmp/drill --target immediate --archive-mode off")
	g.says(t, 9, `-o "-p 5499 -c max_connections=200" -l /var/tmp/drill.log start`)
	g.says(t, 9, "sudo -u postgres psql -p 5499 -c 'select now(), pg_is_in_recovery()'")
	g.says(t, 9, "/usr/lib/postgresql/15/bin/pg_ctl -D /var/tmp/drill stop")
	drill := filepath.Join(pgtest.TempDir(t), "drill")
	mustPK(third, "restore", "--pgdata", drill, "--target", "immediate", "--archive-mode", "off")
	port := pgtest.FreePort(t)
	pgCtl := filepath.Join(pgtest.BinDir(), "pg_ctl")
	sock := filepath.Dir(drill)
	start := exec.Command(pgCtl, "-D", drill, "-o", fmt.Sprintf("-p %d -c max_connections=200 -c unix_socket_directories=%s", port, sock),
		"-l", drill+".log", "-w", "-t", "120", "start")
	pgtest.AsPostgres(t, start)
	if out, err := start.CombinedOutput(); err != nil {
		log, _ := os.ReadFile(drill + ".log")
		t.Fatalf("pg_ctl start of the drill copy: %v\n%s\n%s", err, out, pgtest.Tail(string(log), 3000))
	}
	t.Cleanup(func() {
		stop := exec.Command(pgCtl, "-D", drill, "-m", "immediate", "stop")
		pgtest.AsPostgres(t, stop)
		stop.Run()
	})
	dc, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=postgres-secret dbname=postgres sslmode=disable", port))
	if err != nil {
		t.Fatalf("connect to the drill copy: %v", err)
	}
	// The guide says the copy answers t: paused at its target, read-only.
	g.says(t, 9, "`pg_is_in_recovery()` answers `t`")
	var inRecovery bool
	var rows string
	pgtest.WaitFor(t, time.Minute, "the drill copy to pause at its target", func() (bool, error) {
		var state string
		err := dc.QueryRow(ctx, "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE 'promoted' END").Scan(&inRecovery, &state)
		return err == nil && state == "paused", err
	})
	if err := dc.QueryRow(ctx, "SELECT string_agg(DISTINCT batch::text, ',') || ' rows=' || count(*) FROM events").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	var archiveMode string
	dc.QueryRow(ctx, "SHOW archive_mode").Scan(&archiveMode)
	dc.Close(ctx)
	if !inRecovery || rows != "1,2 rows=1000" || archiveMode != "off" {
		t.Fatalf("drill copy: in recovery %v, rows %q (want 1,2 rows=1000), archive_mode %s", inRecovery, rows, archiveMode)
	}
	stop := exec.Command(pgCtl, "-D", drill, "-w", "stop")
	pgtest.AsPostgres(t, stop)
	if out, err := stop.CombinedOutput(); err != nil {
		t.Fatalf("pg_ctl stop: %v %s", err, out)
	}
	for _, d := range daemons {
		d.stop(t)
	}
}

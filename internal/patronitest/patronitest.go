// Package patronitest runs real Patroni clusters for tests: Debian's
// etcd-server and patroni (3.0.2), PostgreSQL 15, all on 127.0.0.1 with
// free ports, Patroni and PostgreSQL as the postgres user. Everything is
// killed and removed when the test ends.
package patronitest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgkeep/pgkeep/internal/pgtest"
)

// Etcd is one etcd server.
type Etcd struct {
	URL string
	cmd *exec.Cmd
	dir string
}

// StartEtcd starts Debian's etcd on free loopback ports.
func StartEtcd(t testing.TB) *Etcd {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Fatal("etcd not found: run `make deps` (installs Debian's etcd-server)")
	}
	dir := pgtest.TempDir(t)
	client, peer := pgtest.FreePort(t), pgtest.FreePort(t)
	e := &Etcd{URL: fmt.Sprintf("http://127.0.0.1:%d", client), dir: dir}
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peer)
	e.cmd = exec.Command(bin, "--name", "e0", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", e.URL, "--advertise-client-urls", e.URL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "e0="+peerURL, "--initial-cluster-state", "new")
	logf, err := os.Create(filepath.Join(dir, "etcd.log"))
	if err != nil {
		t.Fatal(err)
	}
	e.cmd.Stdout, e.cmd.Stderr = logf, logf
	e.cmd.Env = append(os.Environ(), "ETCD_UNSUPPORTED_ARCH="+goarch())
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.cmd.Process.Kill()
		e.cmd.Wait()
		logf.Close()
	})
	pgtest.WaitFor(t, 30*time.Second, "etcd to be healthy", func() (bool, error) {
		resp, err := http.Get(e.URL + "/health")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == 200, nil
	})
	return e
}

// Pause stops the etcd process (SIGSTOP): it keeps its connections and
// answers nothing, like a server frozen by the hypervisor or a full disk.
// Resume continues it; a test that pauses must resume (Cleanup kills it
// either way).
func (e *Etcd) Pause() error { return e.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume continues a paused etcd (SIGCONT).
func (e *Etcd) Resume() error { return e.cmd.Process.Signal(syscall.SIGCONT) }

func goarch() string {
	out, _ := exec.Command("dpkg", "--print-architecture").Output()
	return strings.TrimSpace(string(out))
}

// Key reads one key through etcd's v3 JSON gateway ("" when absent).
func (e *Etcd) Key(key string) (string, error) {
	body := fmt.Sprintf(`{"key":%q}`, base64.StdEncoding.EncodeToString([]byte(key)))
	resp, err := http.Post(e.URL+"/v3/kv/range", "application/json", strings.NewReader(body))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out struct {
		Kvs []struct {
			Value string `json:"value"`
		} `json:"kvs"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return "", err
	}
	if len(out.Kvs) == 0 {
		return "", nil
	}
	v, err := base64.StdEncoding.DecodeString(out.Kvs[0].Value)
	return string(v), err
}

// WaitNoLeader waits until the leader key of the cluster has expired.
func (c *Cluster) WaitNoLeader(t testing.TB, timeout time.Duration) {
	t.Helper()
	pgtest.WaitFor(t, timeout, "the leader key to expire", func() (bool, error) {
		v, err := c.Etcd.Key("/service/" + c.Scope + "/leader")
		return err == nil && v == "", err
	})
}

// Options describe a Patroni cluster.
type Options struct {
	Scope string
	Nodes int
	// Pgkeep is the pgkeep binary and PgkeepConfig its config file; they
	// become archive_command, restore_command and the first
	// create_replica_method.
	Pgkeep       string
	PgkeepConfig string
	// Bootstrap is the bootstrap section's method part (YAML, indented two
	// spaces), e.g. a custom pgkeep method; empty means initdb.
	Bootstrap string
	// ReplicaMethods overrides create_replica_methods for single nodes,
	// keyed by index in Cluster.Nodes (0 is the first node): {2:
	// {"basebackup"}} makes the third node clone with pg_basebackup only.
	// Nodes not in the map use [pgkeep, basebackup].
	ReplicaMethods map[int][]string
	// ConnectPorts overrides, by index in Cluster.Nodes, the port a node
	// advertises as postgresql.connect_address: what other members'
	// pg_basebackup, create_replica_methods --connstring and
	// primary_conninfo connect to (e.g. a counting proxy in front of its
	// PGPort). Nodes not in the map advertise their PGPort.
	ConnectPorts map[int]int
	// TTL, LoopWait and RetryTimeout override Patroni's DCS timing (10, 2
	// and 5 seconds), e.g. so that a leader rides out an etcd paused for
	// longer than retry_timeout without demoting itself.
	TTL, LoopWait, RetryTimeout int
}

// Cluster is a Patroni cluster.
type Cluster struct {
	Scope string
	Etcd  *Etcd
	Nodes []*Node
	dir   string
}

// Node is one Patroni member and its PostgreSQL.
type Node struct {
	Name    string
	PGPort  int
	APIPort int
	DataDir string
	Config  string
	LogFile string
	cmd     *exec.Cmd
	logf    *os.File
}

// New writes the configuration of a cluster; nodes start with StartNode.
func New(t testing.TB, etcd *Etcd, o Options) *Cluster {
	t.Helper()
	for _, p := range []string{"patroni", "patronictl"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s not found: run `make deps` (installs Debian's patroni)", p)
		}
	}
	c := &Cluster{Scope: o.Scope, Etcd: etcd, dir: pgtest.TempDir(t)}
	for i := 1; i <= o.Nodes; i++ {
		n := &Node{Name: fmt.Sprintf("%s-n%d", o.Scope, i), PGPort: pgtest.FreePort(t), APIPort: pgtest.FreePort(t)}
		n.DataDir = filepath.Join(c.dir, n.Name)
		n.Config = filepath.Join(c.dir, n.Name+".yml")
		n.LogFile = filepath.Join(c.dir, n.Name+".log")
		if err := os.WriteFile(n.Config, []byte(c.config(n, i-1, o)), 0o644); err != nil {
			t.Fatal(err)
		}
		c.Nodes = append(c.Nodes, n)
	}
	pgtest.Chown(t, c.dir)
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range c.Nodes {
				t.Logf("--- %s Patroni log ---\n%s", n.Name, pgtest.Tail(n.Log(), 4000))
				t.Logf("--- %s PostgreSQL log ---\n%s", n.Name, pgtest.Tail(n.ServerLog(), 3000))
			}
		}
		for _, n := range c.Nodes {
			c.Kill(n)
		}
	})
	return c
}

func (c *Cluster) config(n *Node, index int, o Options) string {
	pk := fmt.Sprintf("%s --config %s", o.Pgkeep, o.PgkeepConfig)
	bootstrap := o.Bootstrap
	if bootstrap == "" {
		bootstrap = "  initdb: [{encoding: UTF8}, {locale: C}, data-checksums]\n"
	}
	methods := "pgkeep, basebackup"
	if m, ok := o.ReplicaMethods[index]; ok {
		methods = strings.Join(m, ", ")
	}
	connectPort := n.PGPort
	if p, ok := o.ConnectPorts[index]; ok {
		connectPort = p
	}
	ttl, loop, retry := 10, 2, 5
	if o.TTL > 0 {
		ttl = o.TTL
	}
	if o.LoopWait > 0 {
		loop = o.LoopWait
	}
	if o.RetryTimeout > 0 {
		retry = o.RetryTimeout
	}
	return fmt.Sprintf(`scope: %[1]s
namespace: /service/
name: %[2]s
log:
  level: INFO
restapi:
  listen: 127.0.0.1:%[3]d
  connect_address: 127.0.0.1:%[3]d
etcd3:
  hosts: %[4]s
bootstrap:
  dcs:
    ttl: %[14]d
    loop_wait: %[15]d
    retry_timeout: %[16]d
    maximum_lag_on_failover: 1073741824
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        wal_log_hints: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 128MB
        archive_mode: "on"
        archive_command: "%[5]s wal-push %%p"
        archive_timeout: 0
        log_replication_commands: "on"
        logging_collector: "on"
        log_directory: log
        log_filename: postgresql.log
        log_line_prefix: "%%m [%%p] %%q%%u@%%d "
%[7]s
postgresql:
  listen: 127.0.0.1:%[6]d
  connect_address: 127.0.0.1:%[12]d
  data_dir: %[8]s
  bin_dir: %[9]s
  pgpass: %[10]s
  authentication:
    superuser: {username: postgres, password: postgres-secret}
    replication: {username: replicator, password: replicator-secret}
    rewind: {username: postgres, password: postgres-secret}
  parameters:
    unix_socket_directories: %[11]s
  recovery_conf:
    restore_command: "%[5]s wal-fetch %%f %%p"
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 md5
    - host replication replicator 127.0.0.1/32 md5
  create_replica_methods: [%[13]s]
  pgkeep:
    command: %[5]s create-replica
    keep_data: true
    no_leader: true
  basebackup:
    checkpoint: fast
tags:
  nofailover: false
  noloadbalance: false
`, c.Scope, n.Name, n.APIPort, strings.TrimPrefix(c.Etcd.URL, "http://"), pk, n.PGPort, bootstrap,
		n.DataDir, pgtest.BinDir(), filepath.Join(c.dir, n.Name+".pgpass"), c.dir, connectPort, methods, ttl, loop, retry)
}

// StartNode starts Patroni for n (as postgres), appending to its log.
func (c *Cluster) StartNode(t testing.TB, n *Node) {
	t.Helper()
	f, err := os.OpenFile(n.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	n.logf = f
	n.cmd = exec.Command("patroni", n.Config)
	n.cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + c.dir, "LANG=C.UTF-8", "TZ=UTC"}
	n.cmd.Dir = c.dir
	n.cmd.Stdout, n.cmd.Stderr = f, f
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pgtest.AsPostgres(t, n.cmd)
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
}

// Kill kills n's Patroni and PostgreSQL with SIGKILL, like a crashed host.
func (c *Cluster) Kill(n *Node) {
	if n.cmd != nil && n.cmd.Process != nil {
		syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
		n.cmd.Process.Kill()
		n.cmd.Wait()
		n.cmd = nil
	}
	if data, err := os.ReadFile(filepath.Join(n.DataDir, "postmaster.pid")); err == nil {
		var pid int
		fmt.Sscanf(string(data), "%d", &pid)
		if pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
			// Children (backends, walsender) exit once the postmaster is gone.
			for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	if n.logf != nil {
		n.logf.Close()
		n.logf = nil
	}
}

// Log returns n's Patroni log (PostgreSQL logs to its own files under the
// data directory's log/ when logging_collector is on; here it goes to
// Patroni's stdout).
func (n *Node) Log() string {
	data, _ := os.ReadFile(n.LogFile)
	return string(data)
}

// ServerLog is n's PostgreSQL log (logging_collector writes it under the
// data directory's log/).
func (n *Node) ServerLog() string {
	var b strings.Builder
	// A failed bootstrap's directory is renamed to <dir>.failed by Patroni.
	files, _ := filepath.Glob(filepath.Join(n.DataDir+".failed", "log", "*"))
	more, _ := filepath.Glob(filepath.Join(n.DataDir, "log", "*"))
	for _, f := range append(files, more...) {
		data, _ := os.ReadFile(f)
		b.Write(data)
	}
	return b.String()
}

// DSN connects as the superuser.
func (n *Node) DSN() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=postgres-secret dbname=postgres sslmode=disable connect_timeout=5", n.PGPort)
}

// Conn connects to n's PostgreSQL.
func (n *Node) Conn(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, n.DSN()) }

// Member is one entry of Patroni's GET /cluster.
type Member struct {
	Name     string `json:"name"`
	Role     string `json:"role"`
	State    string `json:"state"`
	Timeline int    `json:"timeline"`
}

// Members asks any node's REST API for the cluster.
func (c *Cluster) Members() ([]Member, error) {
	var lastErr error
	client := http.Client{Timeout: 2 * time.Second}
	for _, n := range c.Nodes {
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/cluster", n.APIPort))
		if err != nil {
			lastErr = err
			continue
		}
		var out struct {
			Members []Member `json:"members"`
		}
		err = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if err != nil {
			lastErr = err
			continue
		}
		return out.Members, nil
	}
	return nil, lastErr
}

// Node returns the node called name.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// WaitLeader waits until some node other than those in not is the running
// leader and answers queries as a primary.
func (c *Cluster) WaitLeader(t testing.TB, timeout time.Duration, not ...*Node) *Node {
	t.Helper()
	var leader *Node
	pgtest.WaitFor(t, timeout, "a Patroni leader", func() (bool, error) {
		ms, err := c.Members()
		if err != nil {
			return false, nil
		}
		for _, m := range ms {
			if m.Role != "leader" || m.State != "running" {
				continue
			}
			n := c.Node(m.Name)
			for _, x := range not {
				if x == n {
					n = nil
				}
			}
			if n == nil {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			conn, err := n.Conn(ctx)
			if err != nil {
				return false, nil
			}
			defer conn.Close(ctx)
			var rec bool
			if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil || rec {
				return false, nil
			}
			leader = n
			return true, nil
		}
		return false, nil
	})
	return leader
}

// WaitStreaming waits until n streams from leader.
func (c *Cluster) WaitStreaming(t testing.TB, leader, n *Node, timeout time.Duration) {
	t.Helper()
	pgtest.WaitFor(t, timeout, n.Name+" to stream from "+leader.Name, func() (bool, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		// What the timeout reports is the last state seen and n's last
		// log lines: a CI log cut to its tail shows only that line.
		conn, err := leader.Conn(ctx)
		if err != nil {
			return false, fmt.Errorf("leader: %v; %s", err, lastLines(n.Log(), 3))
		}
		defer conn.Close(ctx)
		var states []string
		err = conn.QueryRow(ctx, "SELECT coalesce(array_agg(state), '{}') FROM pg_stat_replication WHERE application_name = $1", n.Name).Scan(&states)
		if err == nil && len(states) == 1 && states[0] == "streaming" {
			return true, nil
		}
		return false, fmt.Errorf("replication states %v (%v); %s", states, err, lastLines(n.Log(), 3))
	})
}

// lastLines is the last k lines of a log, on one line.
func lastLines(log string, k int) string {
	lines := strings.Split(strings.TrimRight(log, "\n"), "\n")
	return "last log lines: " + strings.Join(lines[max(0, len(lines)-k):], " | ")
}

// Patronictl runs patronictl against n's configuration.
func (c *Cluster) Patronictl(t testing.TB, n *Node, args ...string) string {
	t.Helper()
	cmd := exec.Command("patronictl", append([]string{"-c", n.Config}, args...)...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + c.dir, "LANG=C.UTF-8"}
	pgtest.AsPostgres(t, cmd)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("patronictl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

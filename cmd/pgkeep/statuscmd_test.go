package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pgkeep/pgkeep/internal/etcdtest"
	"github.com/pgkeep/pgkeep/internal/pgtest"
	"github.com/pgkeep/pgkeep/internal/testbin"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

type binResult struct {
	code           int
	stdout, stderr string
	elapsed        time.Duration
}

// pgkeep runs the built binary with a minimal environment plus env.
func pgkeep(t *testing.T, env []string, args ...string) binResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testbin.Pgkeep(t), args...)
	cmd.Env = append([]string{"PATH=/usr/bin:/bin", "HOME=/tmp", "PGCONNECT_TIMEOUT=5"}, env...)
	cmd.Dir = "/"
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	start := time.Now()
	err := cmd.Run()
	r := binResult{stdout: so.String(), stderr: se.String(), elapsed: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("run pgkeep: %v", err)
	}
	return r
}

// writeConfig writes pgkeep.yml lines into dir and returns the
// environment that selects it.
func writeConfig(t *testing.T, dir string, lines ...string) []string {
	t.Helper()
	p := filepath.Join(dir, "pgkeep.yml")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{"PGKEEP_CONFIG=" + p}
}

// Patroni 3.0.2's keys for a three-member cluster "main".
var patroniKeys = map[string]string{
	"leader":      "pg1",
	"members/pg1": `{"conn_url":"postgres://127.0.0.1:5432/postgres","api_url":"http://127.0.0.1:8008/patroni","state":"running","role":"master","version":"3.0.2","xlog_location":50331808,"timeline":2}`,
	"members/pg2": `{"conn_url":"postgres://127.0.0.1:5433/postgres","api_url":"http://127.0.0.1:8009/patroni","state":"running","role":"replica","version":"3.0.2","tags":{"nobackup":true},"xlog_location":50331648,"timeline":2}`,
	"members/pg3": `{"conn_url":"postgres://127.0.0.1:5434/postgres","api_url":"http://127.0.0.1:8010/patroni","state":"stopped","role":"replica","version":"3.0.2","tags":{"nofailover":true,"replicatefrom":"pg2"}}`,
	"status":      `{"optime":50331808}`,
	"initialize":  "7234567890123456789",
	"config":      `{"ttl":30,"loop_wait":10,"retry_timeout":10,"maximum_lag_on_failover":1048576,"postgresql":{"use_pg_rewind":true}}`,
}

func seedPatroni(t *testing.T, cli *clientv3.Client, prefix string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for k, v := range patroniKeys {
		if _, err := cli.Put(ctx, prefix+k, v); err != nil {
			t.Fatal(err)
		}
	}
}

// archivingPG starts PostgreSQL whose archiver failed once and then
// archived a segment.
func archivingPG(t *testing.T) *pgtest.Cluster {
	t.Helper()
	pg := pgtest.New(t, pgtest.TempDir(t), pgtest.Options{Conf: []string{"archive_mode = on", "archive_command = '/bin/false'"}})
	pg.Start(t)
	conn := pg.Conn(t)
	pg.Exec(t, conn, "CREATE TABLE t AS SELECT 1 AS x")
	pg.Exec(t, conn, "SELECT pg_switch_wal()")
	stat := func(col string) int64 {
		var n int64
		if err := conn.QueryRow(context.Background(), "SELECT "+col+" FROM pg_stat_archiver").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	pgtest.WaitFor(t, 30*time.Second, "a failed archive_command", func() (bool, error) { return stat("failed_count") > 0, nil })
	pg.Exec(t, conn, "ALTER SYSTEM SET archive_command = '/bin/true'")
	pg.Exec(t, conn, "SELECT pg_reload_conf()")
	pgtest.WaitFor(t, 90*time.Second, "an archived segment", func() (bool, error) { return stat("archived_count") > 0, nil })
	return pg
}

// statusJSON is the part of `pgkeep status --json` the tests read.
type statusJSON struct {
	Patroni *struct {
		Scope        string  `json:"scope"`
		Prefix       string  `json:"prefix"`
		Leader       string  `json:"leader"`
		LeaderOptime *uint64 `json:"leader_optime"`
		Error        string  `json:"error"`
		Members      []struct {
			Name         string         `json:"name"`
			Role         string         `json:"role"`
			Leader       bool           `json:"leader"`
			State        string         `json:"state"`
			Timeline     int            `json:"timeline"`
			XLogLocation *uint64        `json:"xlog_location"`
			LagBytes     *uint64        `json:"lag_bytes"`
			Tags         map[string]any `json:"tags"`
			ConnURL      string         `json:"conn_url"`
		} `json:"members"`
	} `json:"patroni"`
	Postgres struct {
		Connection      string     `json:"connection"`
		Error           string     `json:"error"`
		InRecovery      *bool      `json:"in_recovery"`
		ArchiveMode     string     `json:"archive_mode"`
		ArchivedCount   int64      `json:"archived_count"`
		LastArchivedWAL string     `json:"last_archived_wal"`
		LastArchivedAt  *time.Time `json:"last_archived_time"`
		FailedCount     int64      `json:"failed_count"`
		LastFailedWAL   string     `json:"last_failed_wal"`
	} `json:"postgres"`
}

// TestStatus runs `pgkeep status` against a real etcd with TLS client
// certificates and authentication holding Patroni 3.0.2's keys, and a real
// PostgreSQL whose archiver has history.
func TestStatus(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Options{TLS: true, Auth: true})
	seedPatroni(t, etcd.Client(t), "/service/main/")
	pg := archivingPG(t)
	var wantWAL, wantFailedWAL string
	if err := pg.Conn(t).QueryRow(context.Background(),
		"SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver").Scan(&wantWAL, &wantFailedWAL); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	pwFile := filepath.Join(dir, "etcd.pw")
	os.WriteFile(pwFile, []byte(etcd.Password+"\n"), 0o600)
	env := writeConfig(t, dir,
		"postgres:",
		"  dsn: "+pg.DSN(),
		"etcd:",
		"  endpoints: ["+etcd.Endpoint+"]",
		"  cacert: "+etcd.Certs.CA,
		"  cert: "+etcd.Certs.ClientCert,
		"  key: "+etcd.Certs.ClientKey,
		"  username: root",
		"  password_file: "+pwFile,
		"  dial_timeout: 2s",
		"patroni:",
		"  scope: main",
	)

	r := pgkeep(t, env, "status", "--json")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("status --json: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(r.stdout, etcd.Password) {
		t.Fatal("the etcd password is in the output")
	}
	var st statusJSON
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	p := st.Patroni
	if p == nil || p.Scope != "main" || p.Prefix != "/service/main/" || p.Leader != "pg1" || p.Error != "" ||
		p.LeaderOptime == nil || *p.LeaderOptime != 50331808 || len(p.Members) != 3 {
		t.Fatalf("patroni part:\n%s", r.stdout)
	}
	m1, m2, m3 := p.Members[0], p.Members[1], p.Members[2]
	if m1.Name != "pg1" || m1.Role != "master" || !m1.Leader || m1.State != "running" || m1.Timeline != 2 ||
		m1.LagBytes == nil || *m1.LagBytes != 0 || m1.ConnURL != "postgres://127.0.0.1:5432/postgres" {
		t.Errorf("pg1: %+v", m1)
	}
	if m2.Name != "pg2" || m2.Role != "replica" || m2.Leader || m2.LagBytes == nil || *m2.LagBytes != 160 ||
		m2.XLogLocation == nil || *m2.XLogLocation != 50331648 || m2.Tags["nobackup"] != true {
		t.Errorf("pg2: %+v", m2)
	}
	if m3.Name != "pg3" || m3.State != "stopped" || m3.LagBytes != nil || m3.XLogLocation != nil ||
		m3.Tags["nofailover"] != true || m3.Tags["replicatefrom"] != "pg2" {
		t.Errorf("pg3: %+v", m3)
	}
	a := st.Postgres
	if a.Error != "" || a.InRecovery == nil || *a.InRecovery || a.ArchiveMode != "on" || a.ArchivedCount < 1 ||
		a.LastArchivedWAL != wantWAL || a.LastArchivedAt == nil || a.FailedCount < 1 || a.LastFailedWAL != wantFailedWAL {
		t.Errorf("postgres part: %+v\n%s", a, r.stdout)
	}

	// The same as text.
	r = pgkeep(t, env, "status")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("status: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	t.Logf("pgkeep status:\n%s", r.stdout)
	for _, want := range []string{
		"Patroni cluster main (/service/main/ on " + etcd.Endpoint + ")",
		"leader: pg1 (WAL position 0/30000A0)",
		"pg1     leader",
		"pg2     replica  running  2   160",
		"nobackup",
		"pg3     replica  stopped  -   unknown      nofailover,replicatefrom=pg2",
		"last archived:  " + wantWAL,
		"last failure:   " + wantFailedWAL,
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("text output lacks %q", want)
		}
	}

	// Without a leader key.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := etcd.Client(t).Delete(ctx, "/service/main/leader"); err != nil {
		t.Fatal(err)
	}
	r = pgkeep(t, env, "status", "--json")
	st = statusJSON{}
	if err := json.Unmarshal([]byte(r.stdout), &st); r.code != 0 || err != nil || st.Patroni.Leader != "" || st.Patroni.Members[0].Leader {
		t.Fatalf("no leader: exit %d %v\n%s%s", r.code, err, r.stdout, r.stderr)
	}
	if r = pgkeep(t, env, "status"); !strings.Contains(r.stdout, "leader: none") {
		t.Errorf("no leader, text:\n%s", r.stdout)
	}

	// A wrong password: exit 1, one line, no password.
	os.WriteFile(pwFile, []byte("not-the-password\n"), 0o600)
	r = pgkeep(t, env, "status", "--json")
	if r.code != 1 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "authentication failed") ||
		strings.Contains(r.stderr+r.stdout, "not-the-password") || strings.Contains(r.stderr+r.stdout, etcd.Password) {
		t.Fatalf("wrong password: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	os.WriteFile(pwFile, []byte(etcd.Password+"\n"), 0o600)

	// etcd down: exit 1 within the dial timeout, one line naming etcd; the
	// local part is still printed.
	etcd.Stop(t)
	r = pgkeep(t, env, "status", "--json")
	t.Logf("etcd down: exit %d after %s: %s", r.code, r.elapsed, r.stderr)
	if r.code != 1 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "etcd") ||
		!strings.Contains(r.stderr, "no answer within 2s") || r.elapsed > 15*time.Second {
		t.Fatalf("etcd down: exit %d after %s\n%s\n%s", r.code, r.elapsed, r.stdout, r.stderr)
	}
	st = statusJSON{}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || st.Patroni == nil || st.Patroni.Error == "" || st.Postgres.LastArchivedWAL != wantWAL {
		t.Fatalf("etcd down, JSON: %v\n%s", err, r.stdout)
	}
}

func TestStatusWithoutEtcd(t *testing.T) {
	pg := pgtest.New(t, pgtest.TempDir(t), pgtest.Options{})
	pg.Start(t)
	dir := t.TempDir()

	// Local part only; the DSN may also come from PG* variables.
	env := append(writeConfig(t, dir, "log:", "  level: info"),
		"PGHOST=127.0.0.1", "PGPORT="+strconv.Itoa(pg.Port), "PGUSER=postgres", "PGDATABASE=postgres", "PGSSLMODE=disable")
	r := pgkeep(t, env, "status", "--json")
	var st statusJSON
	if err := json.Unmarshal([]byte(r.stdout), &st); r.code != 0 || err != nil || st.Patroni != nil ||
		st.Postgres.Error != "" || st.Postgres.ArchiveMode != "off" || st.Postgres.LastArchivedWAL != "" {
		t.Fatalf("exit %d %v\n%s%s", r.code, err, r.stdout, r.stderr)
	}
	r = pgkeep(t, env, "status")
	if r.code != 0 || !strings.Contains(r.stdout, "Patroni: not configured") || !strings.Contains(r.stdout, "last archived:  none") {
		t.Fatalf("text: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// Nothing reachable at all: exit 1 with one line.
	pg.Stop(t)
	r = pgkeep(t, env, "status")
	if r.code != 1 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "local PostgreSQL") {
		t.Fatalf("postgres down: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// Configuration errors exit 2.
	empty := filepath.Join(dir, "empty.pw")
	os.WriteFile(empty, nil, 0o600)
	for want, lines := range map[string][]string{
		"patroni.scope": {"etcd:", "  endpoints: [127.0.0.1:2379]"},
		"is empty": {"etcd:", "  endpoints: [127.0.0.1:2379]", "  username: root", "  password_file: " + empty,
			"patroni:", "  scope: main"},
	} {
		r := pgkeep(t, writeConfig(t, dir, lines...), "status")
		if r.code != 2 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, want) {
			t.Errorf("%v: exit %d\n%s%s", lines, r.code, r.stdout, r.stderr)
		}
	}
}

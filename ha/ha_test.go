package ha_test

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pgkeep/pgkeep/ha"
	"github.com/pgkeep/pgkeep/internal/etcdtest"
)

// Values as Patroni 3.0.2 writes them (patroni/ha.py touch_member and
// patroni/dcs/etcd3.py), for a three-node cluster "demo".
const (
	leaderJSON  = `{"conn_url":"postgres://127.0.0.1:5432/postgres","api_url":"http://127.0.0.1:8008/patroni","state":"running","role":"master","version":"3.0.2","xlog_location":50331808,"timeline":1}`
	replicaJSON = `{"conn_url":"postgres://127.0.0.1:5433/postgres","api_url":"http://127.0.0.1:8009/patroni","state":"running","role":"replica","version":"3.0.2","tags":{"nobackup":true,"clonefrom":true},"xlog_location":50331648,"timeline":1}`
	// A replica whose PostgreSQL is stopped: Patroni then writes no
	// xlog_location and no timeline.
	stoppedJSON = `{"conn_url":"postgres://127.0.0.1:5434/postgres","api_url":"http://127.0.0.1:8010/patroni","state":"stopped","role":"replica","version":"3.0.2","tags":{"nofailover":true,"noloadbalance":"true"}}`
	configJSON  = `{"ttl":30,"loop_wait":10,"retry_timeout":10,"maximum_lag_on_failover":1048576,"postgresql":{"use_pg_rewind":true,"use_slots":true,"parameters":{"archive_mode":"on","archive_command":"pgkeep wal-push %p"}}}`
	historyJSON = `[[1,25165984,"no recovery target specified","2023-05-10T10:00:00.123456+00:00","pg1"]]`
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

// patroni writes a cluster's keys; leader and members/* go on one lease per
// member, as Patroni's do. It returns the member leases by name.
func patroni(t *testing.T, cli *clientv3.Client, prefix string, keys map[string]string) map[string]clientv3.LeaseID {
	t.Helper()
	leases := map[string]clientv3.LeaseID{}
	lease := func(member string) clientv3.LeaseID {
		if id, ok := leases[member]; ok {
			return id
		}
		g, err := cli.Grant(ctx(t), 30)
		if err != nil {
			t.Fatal(err)
		}
		leases[member] = g.ID
		return g.ID
	}
	for k, v := range keys {
		var opts []clientv3.OpOption
		if name, ok := strings.CutPrefix(k, "members/"); ok {
			opts = append(opts, clientv3.WithLease(lease(name)))
		} else if k == "leader" {
			opts = append(opts, clientv3.WithLease(lease(v)))
		}
		if _, err := cli.Put(ctx(t), prefix+k, v, opts...); err != nil {
			t.Fatalf("put %s: %v", prefix+k, err)
		}
	}
	return leases
}

func demoKeys() map[string]string {
	return map[string]string{
		"leader":      "pg1",
		"members/pg1": leaderJSON,
		"members/pg2": replicaJSON,
		"members/pg3": stoppedJSON,
		"status":      `{"optime":50331900}`,
		"initialize":  "7234567890123456789",
		"config":      configJSON,
		"history":     historyJSON,
		"sync":        `{"leader":"pg1","sync_standby":"pg2"}`,
	}
}

func connect(t *testing.T, s *etcdtest.Server, o ha.Options) *ha.Client {
	t.Helper()
	o.Endpoints = []string{s.Endpoint}
	if o.Scope == "" {
		o.Scope = "demo"
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = 5 * time.Second
	}
	c, err := ha.Connect(ctx(t), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestViewPatroniCluster(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.Options{})
	cli := s.Client(t)
	patroni(t, cli, "/service/demo/", demoKeys())
	// Neighbours that must not leak into the view: another scope sharing
	// the prefix "demo", another namespace, and a malformed member.
	patroni(t, cli, "/service/demo-2/", map[string]string{"leader": "x1", "members/x1": leaderJSON})
	patroni(t, cli, "/other/demo/", map[string]string{"leader": "y1", "members/y1": leaderJSON})

	// "service" without slashes is the same namespace to Patroni.
	c := connect(t, s, ha.Options{Namespace: "service"})
	if c.Prefix() != "/service/demo/" {
		t.Fatalf("prefix %q", c.Prefix())
	}
	if err := c.Put(ctx(t), "backup/last", map[string]string{"by": "pg2"}); err != nil {
		t.Fatal(err)
	}
	v, err := c.View(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range v.Members {
		names = append(names, m.Name)
	}
	if v.Scope != "demo" || v.Leader != "pg1" || !reflect.DeepEqual(names, []string{"pg1", "pg2", "pg3"}) {
		t.Fatalf("scope %q leader %q members %v", v.Scope, v.Leader, names)
	}
	if v.Optime != 50331900 || v.Initialize != "7234567890123456789" || v.Paused || v.StandbyCluster ||
		v.SwitchoverPending || !reflect.DeepEqual(v.SyncStandbys, []string{"pg2"}) || v.Revision == 0 {
		t.Fatalf("cluster facts: %+v", v)
	}
	var cfg struct {
		TTL int `json:"ttl"`
	}
	if err := json.Unmarshal(v.Config, &cfg); err != nil || cfg.TTL != 30 {
		t.Fatalf("config %s: %v", v.Config, err)
	}
	if !v.IsLeader("pg1") || v.IsLeader("pg2") || v.IsLeader("") || !v.IsSyncStandby("pg2") {
		t.Fatal("IsLeader / IsSyncStandby")
	}

	pg1, _ := v.Member("pg1")
	pg2, _ := v.Member("pg2")
	pg3, _ := v.Member("pg3")
	if pg1.Role != "master" || pg1.State != "running" || pg1.Timeline != 1 || !pg1.HasXLogLocation ||
		pg1.XLogLocation != 50331808 || pg1.ConnURL != "postgres://127.0.0.1:5432/postgres" ||
		pg1.APIURL != "http://127.0.0.1:8008/patroni" || pg1.Version != "3.0.2" || len(pg1.Tags) != 0 {
		t.Fatalf("pg1: %+v", pg1)
	}
	if pg2.Role != "replica" || pg2.XLogLocation != 50331648 || !pg2.Tag("nobackup") || !pg2.Tag("clonefrom") || pg2.Tag("nofailover") {
		t.Fatalf("pg2: %+v", pg2)
	}
	if pg3.State != "stopped" || pg3.HasXLogLocation || pg3.Timeline != 0 || !pg3.Tag("nofailover") || !pg3.Tag("noloadbalance") {
		t.Fatalf("pg3: %+v", pg3)
	}
	if lm, ok := v.LeaderMember(); !ok || lm.Name != "pg1" {
		t.Fatal("LeaderMember")
	}
	// The status key (50331900) is newer than the leader's member key.
	if opt, ok := v.LeaderOptime(); !ok || opt != 50331900 {
		t.Fatalf("leader optime %d %v", opt, ok)
	}
	for _, tc := range []struct {
		m     ha.Member
		lag   uint64
		known bool
	}{{pg1, 0, true}, {pg2, 50331900 - 50331648, true}, {pg3, 0, false}} {
		if lag, ok := v.Lag(tc.m); lag != tc.lag || ok != tc.known {
			t.Errorf("lag %s = %d,%v; want %d,%v", tc.m.Name, lag, ok, tc.lag, tc.known)
		}
	}

	// A member key that is not Patroni JSON is listed, marked malformed.
	patroni(t, cli, "/service/demo/", map[string]string{"members/pg4": "{not json"})
	v, err = c.View(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if pg4, ok := v.Member("pg4"); !ok || !pg4.Malformed {
		t.Fatalf("pg4: %+v %v", pg4, ok)
	}
	if _, ok := v.Lag(ha.Member{Name: "pg4"}); ok {
		t.Fatal("lag of a member without position is known")
	}
}

func TestViewWithoutLeader(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.Options{})
	cli := s.Client(t)
	leases := patroni(t, cli, "/service/demo/", demoKeys())
	c := connect(t, s, ha.Options{})

	// The leader's Patroni dies: its lease expires, taking the leader key
	// and its member key with it.
	if _, err := cli.Revoke(ctx(t), leases["pg1"]); err != nil {
		t.Fatal(err)
	}
	v, err := c.View(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if v.Leader != "" || v.IsLeader("pg1") || len(v.Members) != 2 {
		t.Fatalf("leader %q members %+v", v.Leader, v.Members)
	}
	if _, ok := v.LeaderMember(); ok {
		t.Fatal("LeaderMember without leader")
	}
	// Lag falls back to the last optime the leader reported, as patronictl.
	pg2, _ := v.Member("pg2")
	if lag, ok := v.Lag(pg2); !ok || lag != 50331900-50331648 {
		t.Fatalf("lag without leader: %d %v", lag, ok)
	}

	// Pre-2.1 clusters kept the optime in optime/leader.
	if _, err := cli.Delete(ctx(t), "/service/demo/status"); err != nil {
		t.Fatal(err)
	}
	patroni(t, cli, "/service/demo/", map[string]string{"optime/leader": "50331700"})
	if v, err = c.View(ctx(t)); err != nil || v.Optime != 50331700 {
		t.Fatalf("legacy optime: %d %v", v.Optime, err)
	}

	// Nothing at all under the prefix: wrong scope.
	other := connect(t, s, ha.Options{Scope: "nope"})
	if _, err := other.View(ctx(t)); !errors.Is(err, ha.ErrNoCluster) || !strings.Contains(err.Error(), "/service/nope/") {
		t.Fatalf("unknown scope: %v", err)
	}
}

func TestTLSClientCertificates(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.Options{TLS: true})
	patroni(t, s.Client(t), "/service/demo/", demoKeys())

	c := connect(t, s, ha.Options{CAFile: s.Certs.CA, CertFile: s.Certs.ClientCert, KeyFile: s.Certs.ClientKey})
	v, err := c.View(ctx(t))
	if err != nil || v.Leader != "pg1" {
		t.Fatalf("view over TLS: %v %+v", err, v)
	}
	// host:port endpoints become https:// when certificate files are set.
	hostPort := strings.TrimPrefix(s.Endpoint, "https://")
	c2, err := ha.Connect(ctx(t), ha.Options{Endpoints: []string{hostPort}, Scope: "demo",
		CAFile: s.Certs.CA, CertFile: s.Certs.ClientCert, KeyFile: s.Certs.ClientKey})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.View(ctx(t)); err != nil {
		t.Fatalf("host:port endpoint: %v", err)
	}

	// Without a client certificate, and trusting another CA: errors name
	// the cause, within the timeout.
	foreign := etcdtest.NewCerts(t, t.TempDir())
	for name, o := range map[string]ha.Options{
		"no client certificate": {CAFile: s.Certs.CA},
		"unknown CA":            {CAFile: foreign.CA, CertFile: s.Certs.ClientCert, KeyFile: s.Certs.ClientKey},
	} {
		o.DialTimeout = time.Second
		c := connect(t, s, o)
		start := time.Now()
		_, err := c.View(ctx(t))
		elapsed := time.Since(start)
		t.Logf("%s: %v (%s)", name, err, elapsed)
		if err == nil || !errors.Is(err, ha.ErrUnavailable) || elapsed > 5*time.Second {
			t.Errorf("%s: got %v after %s", name, err, elapsed)
		}
		if !strings.Contains(err.Error(), "certificate") {
			t.Errorf("%s: error does not name the certificate problem: %v", name, err)
		}
	}

	// Plain http against TLS options is refused before dialing.
	if _, err := ha.Connect(ctx(t), ha.Options{Endpoints: []string{"http://127.0.0.1:1"}, Scope: "demo", CAFile: s.Certs.CA}); err == nil {
		t.Fatal("http:// endpoint with TLS files accepted")
	}
}

func TestAuthentication(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.Options{Auth: true})
	patroni(t, s.Client(t), "/service/demo/", demoKeys())

	c := connect(t, s, ha.Options{Username: s.Username, Password: s.Password})
	if v, err := c.View(ctx(t)); err != nil || v.Leader != "pg1" {
		t.Fatalf("view as root: %v", err)
	}

	const wrong = "wrong-password-must-not-appear"
	start := time.Now()
	_, err := ha.Connect(ctx(t), ha.Options{Endpoints: []string{s.Endpoint}, Scope: "demo", Username: "root", Password: wrong})
	if err == nil || !errors.Is(err, ha.ErrAuth) || time.Since(start) > 5*time.Second {
		t.Fatalf("wrong password: %v", err)
	}
	t.Logf("wrong password: %v", err)
	if msg := err.Error(); strings.Contains(msg, wrong) || strings.Contains(msg, s.Password) ||
		!strings.Contains(msg, `"root"`) || !strings.Contains(msg, "password") || strings.Contains(msg, "\n") {
		t.Fatalf("wrong password error: %q", msg)
	}

	// No credentials at all against an etcd that requires them.
	anon := connect(t, s, ha.Options{})
	if _, err := anon.View(ctx(t)); err == nil || !strings.Contains(err.Error(), "requires authentication") {
		t.Fatalf("anonymous: %v", err)
	}

	// A user who may only read Patroni's keys can view but not lock.
	s.AddUser(t, "monitor", "monitor-secret", "/service/demo/", false)
	ro := connect(t, s, ha.Options{Username: "monitor", Password: "monitor-secret"})
	if _, err := ro.View(ctx(t)); err != nil {
		t.Fatalf("read-only view: %v", err)
	}
	_, err = ro.TryLock(ctx(t), "backup", 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), `permission denied for user "monitor"`) || strings.Contains(err.Error(), "monitor-secret") {
		t.Fatalf("read-only lock: %v", err)
	}
}

func TestEtcdDown(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.Options{})
	patroni(t, s.Client(t), "/service/demo/", demoKeys())
	c := connect(t, s, ha.Options{DialTimeout: time.Second})
	if _, err := c.View(ctx(t)); err != nil {
		t.Fatal(err)
	}
	s.Stop(t)
	start := time.Now()
	_, err := c.View(ctx(t))
	elapsed := time.Since(start)
	t.Logf("etcd down: %v (%s)", err, elapsed)
	if !errors.Is(err, ha.ErrUnavailable) || elapsed > 4*time.Second || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("view with etcd down: %v after %s", err, elapsed)
	}
	if _, err := c.TryLock(ctx(t), "backup", 2*time.Second); !errors.Is(err, ha.ErrUnavailable) {
		t.Fatalf("lock with etcd down: %v", err)
	}
	// The same client recovers when etcd is back.
	s.Restart(t)
	if v, err := c.View(ctx(t)); err != nil || v.Leader != "pg1" {
		t.Fatalf("view after restart: %v", err)
	}
}

func TestLockContention(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.Options{})
	n1 := connect(t, s, ha.Options{Identity: "node1"})
	n2 := connect(t, s, ha.Options{Identity: "node2"})

	// Both try at the same moment, several times over: exactly one wins.
	for round := 0; round < 5; round++ {
		var wg sync.WaitGroup
		locks := make([]*ha.Lock, 2)
		errs := make([]error, 2)
		for i, c := range []*ha.Client{n1, n2} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				locks[i], errs[i] = c.TryLock(ctx(t), "backup/daily", 10*time.Second)
			}()
		}
		wg.Wait()
		winner, loser := 0, 1
		if locks[0] == nil {
			winner, loser = 1, 0
		}
		if locks[winner] == nil || locks[loser] != nil {
			t.Fatalf("round %d: locks %v errors %v", round, locks, errs)
		}
		var le *ha.LockedError
		if !errors.Is(errs[loser], ha.ErrLocked) || !errors.As(errs[loser], &le) ||
			le.Holder != []string{"node1", "node2"}[winner] || le.Key != "backup/daily" {
			t.Fatalf("round %d: loser's error %v", round, errs[loser])
		}
		// After Release the other one wins.
		if err := locks[winner].Release(ctx(t)); err != nil {
			t.Fatal(err)
		}
		select {
		case <-locks[winner].Lost():
		default:
			t.Fatal("Lost not closed after Release")
		}
		if err := locks[winner].Release(ctx(t)); err != nil {
			t.Fatalf("second release: %v", err)
		}
		other := []*ha.Client{n1, n2}[loser]
		l, err := other.TryLock(ctx(t), "backup/daily", 10*time.Second)
		if err != nil {
			t.Fatalf("round %d: after release: %v", round, err)
		}
		if err := l.Release(ctx(t)); err != nil {
			t.Fatal(err)
		}
	}
	// Different keys do not contend.
	a, err1 := n1.TryLock(ctx(t), "a", 5*time.Second)
	b, err2 := n2.TryLock(ctx(t), "b", 5*time.Second)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	a.Release(ctx(t))
	b.Release(ctx(t))
	if _, err := n1.TryLock(ctx(t), "/abs", time.Second); err == nil {
		t.Fatal("absolute lock name accepted")
	}
}

func TestLockExpiresWhenHolderDies(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.Options{})
	n1 := connect(t, s, ha.Options{Identity: "node1"})
	n2 := connect(t, s, ha.Options{Identity: "node2"})
	const ttl = 2 * time.Second
	l, err := n1.TryLock(ctx(t), "backup", ttl)
	if err != nil {
		t.Fatal(err)
	}
	// Held well past the TTL while the keepalive runs.
	time.Sleep(2 * ttl)
	if _, err := n2.TryLock(ctx(t), "backup", ttl); !errors.Is(err, ha.ErrLocked) {
		t.Fatalf("lock taken while kept alive: %v", err)
	}
	select {
	case <-l.Lost():
		t.Fatal("lost while kept alive")
	default:
	}

	l.StopKeepAlive()
	start := time.Now()
	for {
		l2, err := n2.TryLock(ctx(t), "backup", ttl)
		if err == nil {
			t.Logf("taken over after %s", time.Since(start))
			l2.Release(ctx(t))
			break
		}
		if !errors.Is(err, ha.ErrLocked) || time.Since(start) > ttl+5*time.Second {
			t.Fatalf("after the holder stopped: %v (%s)", err, time.Since(start))
		}
		time.Sleep(100 * time.Millisecond)
	}
	select {
	case <-l.Lost():
	case <-time.After(5 * time.Second):
		t.Fatal("Lost not closed for a dead holder")
	}
	if err := l.Release(ctx(t)); err != nil {
		t.Fatalf("release after expiry: %v", err)
	}
}

func TestLockLostWhenEtcdGoesAway(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.Options{})
	c := connect(t, s, ha.Options{DialTimeout: time.Second})
	const ttl = 2 * time.Second
	l, err := c.TryLock(ctx(t), "backup", ttl)
	if err != nil {
		t.Fatal(err)
	}
	s.Stop(t)
	start := time.Now()
	select {
	case <-l.Lost():
		t.Logf("lost %s after etcd stopped", time.Since(start))
	case <-time.After(ttl + 10*time.Second):
		t.Fatal("Lost not closed with etcd down")
	}
	if err := l.Release(ctx(t)); !errors.Is(err, ha.ErrUnavailable) {
		t.Fatalf("release with etcd down: %v", err)
	}
}

func TestRecords(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.Options{})
	c := connect(t, s, ha.Options{})
	type result struct {
		Node     string    `json:"node"`
		Finished time.Time `json:"finished"`
		OK       bool      `json:"ok"`
	}
	var got result
	if found, err := c.Get(ctx(t), "jobs/backup", &got); err != nil || found {
		t.Fatalf("missing record: %v %v", found, err)
	}
	want := result{Node: "pg2", Finished: time.Date(2024, 5, 1, 2, 3, 4, 0, time.UTC), OK: true}
	if err := c.Put(ctx(t), "jobs/backup", want); err != nil {
		t.Fatal(err)
	}
	if found, err := c.Get(ctx(t), "jobs/backup", &got); err != nil || !found || got != want {
		t.Fatalf("record: %+v %v %v", got, found, err)
	}
	// Stored under pgkeep's prefix, outside Patroni's, as JSON.
	resp, err := s.Client(t).Get(ctx(t), "/service/pgkeep/demo/records/jobs/backup")
	if err != nil || len(resp.Kvs) != 1 || !json.Valid(resp.Kvs[0].Value) {
		t.Fatalf("raw record: %v %v", resp, err)
	}
	for _, bad := range []string{"", "/x", "x/", "a//b"} {
		if err := c.Put(ctx(t), bad, 1); err == nil {
			t.Errorf("name %q accepted", bad)
		}
	}
}

func TestConnectOptions(t *testing.T) {
	for name, o := range map[string]ha.Options{
		"no endpoints":       {Scope: "demo"},
		"no scope":           {Endpoints: []string{"127.0.0.1:2379"}},
		"user, no password":  {Endpoints: []string{"127.0.0.1:2379"}, Scope: "demo", Username: "root"},
		"cert without key":   {Endpoints: []string{"127.0.0.1:2379"}, Scope: "demo", CertFile: "/x"},
		"credentials in URL": {Endpoints: []string{"http://root:hunter2@127.0.0.1:2379"}, Scope: "demo"},
		"bad scheme":         {Endpoints: []string{"ftp://127.0.0.1:2379"}, Scope: "demo"},
		"missing CA file":    {Endpoints: []string{"127.0.0.1:2379"}, Scope: "demo", CAFile: "/nonexistent/ca.crt"},
	} {
		_, err := ha.Connect(context.Background(), o)
		if err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if got := ha.BasePath("/service/", "demo"); got != "/service/demo" {
		t.Errorf("BasePath = %q", got)
	}
	if got := ha.BasePath("pg//ns", "demo"); got != "/pg/ns/demo" {
		t.Errorf("BasePath = %q", got)
	}
}

// Records of earlier versions, under Patroni's prefix (which `patronictl
// remove` deletes), move to pgkeep's own prefix; a record already there
// is kept.
func TestMigrateRecords(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.Options{})
	cli := s.Client(t)
	for k, v := range map[string]string{
		"/service/demo/pgkeep/records/runs/backup/100": `{"job":"backup","node":"old"}`,
		"/service/demo/pgkeep/records/runs/backup/200": `{"job":"backup","node":"old"}`,
		"/service/pgkeep/demo/records/runs/backup/200": `{"job":"backup","node":"new"}`,
	} {
		if _, err := cli.Put(ctx(t), k, v); err != nil {
			t.Fatal(err)
		}
	}
	c, err := ha.Connect(ctx(t), ha.Options{Endpoints: []string{s.Endpoint}, Scope: "demo"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n, err := c.MigrateRecords(ctx(t))
	if err != nil || n != 2 {
		t.Fatalf("migrate: %d %v", n, err)
	}
	var got struct{ Node string }
	for name, want := range map[string]string{"runs/backup/100": "old", "runs/backup/200": "new"} {
		if found, err := c.Get(ctx(t), name, &got); err != nil || !found || got.Node != want {
			t.Errorf("%s: found=%v %v node %q, want %q", name, found, err, got.Node, want)
		}
	}
	if resp, err := cli.Get(ctx(t), "/service/demo/pgkeep/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || resp.Count != 0 {
		t.Errorf("old records left: %v %v", resp, err)
	}
}

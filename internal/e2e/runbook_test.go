package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/patronitest"
	"github.com/pgkeep/pgkeep/internal/pgtest"
)

// TestRunbooks follows docs/patroni.md's runbooks step by step on a real
// three-node Patroni cluster: roll the whole cluster back to a point in
// time, then re-create a replica from the archive. The rollback's step 6
// used to fail: create-replica restored the newest backup, which belongs to
// the abandoned timeline, and PostgreSQL refused it ("requested timeline 2
// is not a child of this server's history") after create-replica exited 0.
func TestRunbooks(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs"})
	etcd := patronitest.StartEtcd(t)
	opts := patronitest.Options{Scope: "rb", Nodes: 3, Pgkeep: pgkeepBin(t), PgkeepConfig: r.config}
	c := patronitest.New(t, etcd, opts)
	for _, n := range c.Nodes {
		c.StartNode(t, n)
	}
	leader := c.WaitLeader(t, 2*time.Minute)
	lc := mustConn(t, leader)
	execSQL(t, lc, "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)")
	insertBatch(t, lc, 1)
	leaderEnv := func(n *patronitest.Node) []string {
		return append(append([]string{}, r.env...), "PGKEEP_POSTGRES_DSN="+n.DSN(), "PGKEEP_PGDATA="+n.DataDir)
	}
	mustBackup := func(n *patronitest.Node) string {
		res := runPgkeep(t, leaderEnv(n), "", "backup")
		if res.code != 0 {
			t.Fatalf("backup on %s: exit %d\n%s", n.Name, res.code, res.stderr)
		}
		return strings.TrimSpace(res.stdout)
	}
	before := mustBackup(leader)
	insertBatch(t, lc, 2)
	target := nowUTC(t, lc)
	time.Sleep(50 * time.Millisecond)
	insertBatch(t, lc, 3) // the bad data the rollback removes
	waitInRepo(t, r, switchWAL(t, lc))
	lc.Close(context.Background())

	// Rollback, step 1 is finding the moment (target). Step 2: keep the
	// current state (this backup is on the timeline being abandoned, and
	// the newest one) and note the timeline.
	abandoned := mustBackup(leader)
	if out := c.Patronictl(t, leader, "list"); !strings.Contains(out, "running") {
		t.Fatalf("patronictl list: %s", out)
	}
	// Step 3: stop Patroni on the replicas, then on the leader, and remove
	// the cluster's state in etcd.
	for _, n := range c.Nodes {
		if n != leader {
			c.Stop(t, n)
		}
	}
	c.Stop(t, leader)
	out := c.PatronictlInput(t, c.Nodes[0], "rb\nYes I am aware\n"+leader.Name+"\n", "remove", "rb")
	if v, _ := etcd.Key("/service/rb/initialize"); v != "" {
		t.Fatalf("patronictl remove left the initialize key: %s", out)
	}
	// Step 4: move every data directory aside.
	for _, n := range c.Nodes {
		if err := os.Rename(n.DataDir, n.DataDir+".before-rollback"); err != nil {
			t.Fatal(err)
		}
	}
	// Step 5: the bootstrap method as in configs/patroni.yml, on one node.
	pk := pgkeepBin(t) + " --config " + r.config
	rollback := opts
	rollback.Bootstrap = fmt.Sprintf(`  method: pgkeep
  pgkeep:
    command: %s bootstrap --target-time=%s
    recovery_conf:
      restore_command: "%s wal-fetch %%f %%p"
      recovery_target_time: '%s'
      recovery_target_action: promote
      recovery_target_timeline: latest
`, pk, target, pk, pgTime(target))
	c.Reconfigure(t, rollback)
	first := c.Nodes[0]
	c.StartNode(t, first)
	if l := c.WaitLeader(t, 3*time.Minute); l != first {
		t.Fatalf("leader %s after the rollback bootstrap, want %s", l.Name, first.Name)
	}
	if !strings.Contains(first.Log(), "pgkeep bootstrap: restored backup "+before) {
		t.Fatalf("bootstrap did not restore %s:\n%s", before, pgtest.Tail(first.Log(), 3000))
	}
	waitRows(t, first, "1,2 rows=1000")

	// Step 6: the other nodes come from create-replica, with a backup on
	// the new timeline's history (not the abandoned newest one).
	leaderLogBefore := serverLog(first)
	// A node's log holds its earlier lives too (before the rollback it
	// may have been created from the then newest backup, legitimately):
	// only what it logs from here on is judged.
	logFrom := map[string]int{}
	for _, n := range c.Nodes[1:] {
		logFrom[n.Name] = len(n.Log())
		c.StartNode(t, n)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, h := range []string{"00000002.history", "00000003.history"} {
				data, res := fetchBytes(t, r, h)
				t.Logf("%s (fetch exit %d):\n%s", h, res.code, data)
			}
			t.Logf("backups: %+v", listBackups(t, r))
		}
	})
	for _, n := range c.Nodes[1:] {
		c.WaitStreaming(t, first, n, 3*time.Minute)
		log := n.Log()
		if k := logFrom[n.Name]; k <= len(log) {
			log = log[k:]
		}
		if !strings.Contains(log, "pgkeep create-replica: restored backup "+before) || strings.Contains(log, abandoned) {
			t.Fatalf("%s was not created from %s (the abandoned timeline's %s must be skipped):\n%s", n.Name, before, abandoned, pgtest.Tail(log, 3000))
		}
		waitRows(t, n, "1,2 rows=1000")
	}
	if during := strings.TrimPrefix(serverLog(first), leaderLogBefore); strings.Contains(during, "BASE_BACKUP") {
		t.Fatalf("a replica fell back to a base backup from the leader:\n%s", pgtest.Tail(during, 3000))
	}
	fresh := mustBackup(first)
	// Step 7: the bootstrap section back to initdb.
	c.Reconfigure(t, opts)

	// Re-create a broken replica: step 1, a complete backup and a healthy
	// archiver.
	rows := listBackups(t, r)
	if rows[len(rows)-1].ID != fresh || rows[len(rows)-1].Status != "complete" || rows[len(rows)-1].Tl != 2 {
		t.Fatalf("backup list after the rollback: %+v", rows)
	}
	if res := runPgkeep(t, leaderEnv(first), "", "status"); res.code != 0 || !strings.Contains(res.stdout, "archiv") {
		t.Fatalf("pgkeep status: exit %d %s%s", res.code, res.stdout, res.stderr)
	}
	// Step 2: patronictl reinit.
	broken := c.Nodes[2]
	lc = mustConn(t, first)
	insertBatch(t, lc, 4)
	c.Patronictl(t, broken, "reinit", "rb", broken.Name, "--force")
	// Step 3: the log line, then running and streaming again.
	pgtest.WaitFor(t, 3*time.Minute, "pgkeep to re-create "+broken.Name, func() (bool, error) {
		return strings.Contains(broken.Log(), "pgkeep create-replica: restored backup "+fresh), nil
	})
	c.WaitStreaming(t, first, broken, 3*time.Minute)
	waitRows(t, broken, "1,2,4 rows=1500")
	// Patroni 3.0.2 shows a streaming replica as "running", lag in MB.
	pgtest.WaitFor(t, time.Minute, "patronictl list to show every member running, replicas at lag 0", func() (bool, error) {
		out := c.Patronictl(t, first, "list")
		return strings.Count(out, "| running") == 3 && strings.Count(out, "|         0 |") == 2, nil
	})
}

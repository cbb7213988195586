package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgkeep/pgkeep/internal/patronitest"
	"github.com/pgkeep/pgkeep/internal/pgtest"
)

// TestPatroni runs a real three-node Patroni 3.0.2 cluster on etcd with
// pgkeep as archive_command, restore_command and the first
// create_replica_method, and walks through what operators rely on: the
// fallback to basebackup without a backup, patronictl reinit from the
// archive, a hard failover, a point-in-time clone through Patroni's custom
// bootstrap, and a cluster rebuilt from the repository alone.
func TestPatroni(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs"})
	etcd := patronitest.StartEtcd(t)
	c := patronitest.New(t, etcd, patronitest.Options{
		Scope: "pk", Nodes: 3, Pgkeep: pgkeepBin(t), PgkeepConfig: r.config,
	})
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	ctx := context.Background()
	top := t // connections outlive subtests

	c.StartNode(t, n1)
	leader := c.WaitLeader(t, 2*time.Minute)
	lc := mustConn(t, leader)
	execSQL(t, lc, "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)")
	insertBatch(t, lc, 1)

	t.Run("no backup: create-replica fails and Patroni falls back to basebackup", func(t *testing.T) {
		c.StartNode(t, n2)
		c.StartNode(t, n3)
		c.WaitStreaming(t, leader, n2, 3*time.Minute)
		c.WaitStreaming(t, leader, n3, 3*time.Minute)
		for _, n := range []*patronitest.Node{n2, n3} {
			if !strings.Contains(n.Log(), "no backup in the repository") {
				t.Fatalf("%s: pgkeep create-replica did not run or did not say why it failed:\n%s", n.Name, pgtest.Tail(n.Log(), 3000))
			}
			waitRows(t, n, "1 rows=500")
		}
	})

	t.Run("reinit builds the replica from the archive, not the primary", func(t *testing.T) {
		res := runPgkeep(t, append(append([]string{}, r.env...),
			"PGKEEP_POSTGRES_DSN="+leader.DSN(), "PGKEEP_PGDATA="+leader.DataDir), "", "backup")
		if res.code != 0 {
			t.Fatalf("backup on the leader: exit %d\n%s", res.code, res.stderr)
		}
		insertBatch(t, lc, 2) // after the backup: must come from WAL
		replica := n3
		if replica == leader {
			replica = n2
		}
		before := serverLog(leader)
		c.Patronictl(t, replica, "reinit", c.Scope, replica.Name, "--force")
		pgtest.WaitFor(t, 3*time.Minute, "pgkeep to re-create "+replica.Name, func() (bool, error) {
			return strings.Contains(replica.Log(), "pgkeep create-replica: restored backup"), nil
		})
		c.WaitStreaming(t, leader, replica, 3*time.Minute)
		waitRows(t, replica, "1,2 rows=1000")
		during := strings.TrimPrefix(serverLog(leader), before)
		if strings.Contains(during, "BASE_BACKUP") {
			t.Fatalf("the primary served a base backup during the reinit:\n%s", pgtest.Tail(during, 3000))
		}
	})

	var afterFailover string
	t.Run("kill -9 of the leader: new timeline archived, old leader rejoins", func(t *testing.T) {
		insertBatch(t, lc, 3)
		for _, n := range c.Nodes {
			if n != leader {
				waitRows(t, n, "1,2,3 rows=1500")
			}
		}
		lc.Close(ctx)
		old := leader
		c.Kill(old)
		leader = c.WaitLeader(t, 2*time.Minute, old)
		lc = mustConn(top, leader)
		pgtest.WaitFor(t, time.Minute, "the new timeline's history file in the repository", func() (bool, error) {
			_, err := os.Stat(filepath.Join(r.repoDir, "wal", "history", "00000002.history"))
			return err == nil, nil
		})
		// The new leader archives the old timeline's last segment as .partial.
		pgtest.WaitFor(t, time.Minute, "the old timeline's .partial segment in the repository", func() (bool, error) {
			m, _ := filepath.Glob(filepath.Join(r.repoDir, "wal", "0000000100000000", "00000001*.partial"))
			return len(m) == 1, nil
		})
		insertBatch(t, lc, 4)
		afterFailover = nowUTC(t, lc)
		time.Sleep(20 * time.Millisecond)
		insertBatch(t, lc, 5)
		seg := switchWAL(t, lc)
		if !strings.HasPrefix(seg, "00000002") {
			t.Fatalf("new leader writes %s, want timeline 2", seg)
		}
		waitInRepo(t, r, seg)
		c.StartNode(t, old)
		c.WaitStreaming(t, leader, old, 3*time.Minute)
		waitRows(t, old, "1,2,3,4,5 rows=2500")
	})

	t.Run("restore to a time after the failover", func(t *testing.T) {
		// Patroni passes max_wal_senders and friends on the postmaster's
		// command line, not in postgresql.conf: give the restored copy the
		// same values, as a restore outside Patroni needs.
		// Its pg_hba.conf is Patroni's (passwords); the test connects locally.
		hba := filepath.Join(pgtest.TempDir(t), "pg_hba.conf")
		if err := os.WriteFile(hba, []byte("local all all trust\nhost all all 127.0.0.1/32 trust\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		rc := restoreAndStartConf(t, r, []string{"max_wal_senders = 10", "max_replication_slots = 10", "max_connections = 100", "hba_file = '" + hba + "'"},
			"--target-time", afterFailover, "--target-action", "promote")
		waitRecoveryDone(t, rc, false)
		if got := batches(t, rc); got != "1,2,3,4 rows=2000" {
			t.Fatalf("restored to %s: %s", afterFailover, got)
		}
	})

	t.Run("bootstrap a new cluster at a point in time from this repository", func(t *testing.T) {
		cloneRepo := newRepo(t, repoOpts{kind: "fs"})
		pk := pgkeepBin(t) + " --config " + r.config
		clone := patronitest.New(t, etcd, patronitest.Options{
			Scope: "clone", Nodes: 1, Pgkeep: pgkeepBin(t), PgkeepConfig: cloneRepo.config,
			Bootstrap: fmt.Sprintf(`  method: pgkeep
  pgkeep:
    command: %s bootstrap --target-time=%s
    recovery_conf:
      restore_command: "%s wal-fetch %%f %%p"
      recovery_target_time: '%s'
      recovery_target_action: promote
      recovery_target_timeline: latest
`, pk, afterFailover, pk, pgTime(afterFailover)),
		})
		clone.StartNode(t, clone.Nodes[0])
		cl := clone.WaitLeader(t, 3*time.Minute)
		if !strings.Contains(cl.Log(), "pgkeep bootstrap: restored backup") {
			t.Fatalf("bootstrap did not go through pgkeep:\n%s", pgtest.Tail(cl.Log(), 3000))
		}
		waitRows(t, cl, "1,2,3,4 rows=2000")
	})

	t.Run("all data directories lost: a node comes back from the repository alone", func(t *testing.T) {
		insertBatch(t, lc, 6)
		waitInRepo(t, r, switchWAL(t, lc))
		lc.Close(ctx)
		for _, n := range c.Nodes {
			c.Kill(n)
		}
		for _, n := range c.Nodes {
			if err := os.RemoveAll(n.DataDir); err != nil {
				t.Fatal(err)
			}
		}
		if v, _ := etcd.Key("/service/pk/initialize"); v == "" {
			t.Fatal("the cluster's initialize key is gone from etcd")
		}
		c.WaitNoLeader(t, time.Minute)
		c.StartNode(t, n2)
		l := c.WaitLeader(t, 4*time.Minute)
		if l != n2 {
			t.Fatalf("leader %s, want %s", l.Name, n2.Name)
		}
		if !strings.Contains(n2.Log(), "wal_source=\"the repository alone (no leader)\"") {
			t.Fatalf("create-replica did not run without a leader:\n%s", pgtest.Tail(n2.Log(), 3000))
		}
		waitRows(t, n2, "1,2,3,4,5,6 rows=3000")
	})
}

// pgTime writes an RFC 3339 UTC time the way recovery_target_time accepts.
func pgTime(rfc3339 string) string {
	return strings.Replace(strings.Replace(rfc3339, "T", " ", 1), "Z", "+00", 1)
}

func mustConn(t *testing.T, n *patronitest.Node) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := n.Conn(ctx)
	if err != nil {
		t.Fatalf("connect to %s: %v", n.Name, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func execSQL(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// waitRows waits until n's events table holds exactly want (batches() form).
func waitRows(t *testing.T, n *patronitest.Node, want string) {
	t.Helper()
	got := ""
	pgtest.WaitFor(t, 2*time.Minute, n.Name+" to hold "+want, func() (bool, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := n.Conn(ctx)
		if err != nil {
			return false, nil
		}
		defer conn.Close(ctx)
		err = conn.QueryRow(ctx,
			"SELECT coalesce(string_agg(b::text, ',' ORDER BY b), '') || ' rows=' || (SELECT count(*) FROM events) FROM (SELECT DISTINCT batch b FROM events) x").Scan(&got)
		return err == nil && got == want, nil
	})
}

// switchWAL ends the current segment and returns its name.
func switchWAL(t *testing.T, conn *pgx.Conn) string {
	t.Helper()
	var seg string
	if err := conn.QueryRow(context.Background(), "SELECT pg_walfile_name(pg_switch_wal())").Scan(&seg); err != nil {
		t.Fatal(err)
	}
	return seg
}

func waitInRepo(t *testing.T, r *testRepo, seg string) {
	t.Helper()
	pgtest.WaitFor(t, time.Minute, seg+" in the repository", func() (bool, error) {
		_, err := os.Stat(filepath.Join(r.repoDir, "wal", seg[:16], seg))
		return err == nil, nil
	})
}

func serverLog(n *patronitest.Node) string { return n.ServerLog() }

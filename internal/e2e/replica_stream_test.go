package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/patronitest"
	"github.com/pgkeep/pgkeep/internal/pgtest"
)

// TestReplicaStreamsPromptly: a replica made by pgkeep create-replica whose
// first attempts to stream fail (here the leader's replication port
// refuses connections until a second after the replica has replayed the
// archive: the stand-in for the leader not having created the new member's
// slot yet, which is what a fast restore runs into) streams within a
// second or so of the leader becoming reachable, not after PostgreSQL's
// default 5 s wal_retrieve_retry_interval. The bound is a sanity check;
// bench/replica.sh measures the real figure.
func TestReplicaStreamsPromptly(t *testing.T) {
	proxy := startCountingProxy(t)
	r := newRepo(t, repoOpts{kind: "fs"})
	etcd := patronitest.StartEtcd(t)
	c := patronitest.New(t, etcd, patronitest.Options{
		Scope: "rs", Nodes: 2, Pgkeep: pgkeepBin(t), PgkeepConfig: r.config,
		ReplicaMethods: map[int][]string{1: {"pgkeep"}},
		ConnectPorts:   map[int]int{0: proxy.port},
	})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	leaderAddr := fmt.Sprintf("127.0.0.1:%d", n1.PGPort)
	proxy.setTarget(leaderAddr)
	c.StartNode(t, n1)
	if l := c.WaitLeader(t, 2*time.Minute); l != n1 {
		t.Fatalf("leader is %s", l.Name)
	}
	res := runPgkeep(t, append(append([]string{}, r.env...), "PGKEEP_POSTGRES_DSN="+n1.DSN(), "PGKEEP_PGDATA="+n1.DataDir), "", "backup")
	if res.code != 0 {
		t.Fatalf("pgkeep backup: exit %d\n%s", res.code, res.stderr)
	}

	c.StartNode(t, n2)
	pgtest.WaitFor(t, 3*time.Minute, "create-replica", func() (bool, error) {
		return strings.Contains(n2.Log(), "replica has been created using pgkeep"), nil
	})
	proxy.setTarget("") // the leader's replication port now closes every connection
	pgtest.WaitFor(t, 2*time.Minute, "the replica to replay the archive", func() (bool, error) {
		return strings.Contains(n2.ServerLog(), "database system is ready to accept read-only connections"), nil
	})
	time.Sleep(time.Second) // its first attempts to stream fail meanwhile
	proxy.setTarget(leaderAddr)
	open := time.Now()
	ctx := context.Background()
	lc := mustConn(t, n1)
	var streamed time.Duration
	for streamed == 0 {
		var k int
		if err := lc.QueryRow(ctx, "SELECT count(*) FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'", n2.Name).Scan(&k); err != nil {
			t.Fatal(err)
		}
		if k == 1 {
			streamed = time.Since(open)
			break
		}
		if time.Since(open) > time.Minute {
			t.Fatalf("the replica does not stream a minute after the leader became reachable\n%s", pgtest.Tail(n2.ServerLog(), 3000))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("streaming %s after the leader became reachable", streamed.Round(time.Millisecond))
	if !strings.Contains(n2.ServerLog(), "could not connect to the primary server") && !strings.Contains(n2.ServerLog(), "could not start WAL streaming") &&
		!strings.Contains(n2.ServerLog(), "closed the connection") {
		t.Fatalf("the replica never failed to stream: the test did not test anything\n%s", pgtest.Tail(n2.ServerLog(), 3000))
	}
	if streamed > 2500*time.Millisecond {
		t.Fatalf("the replica streamed %s after the leader became reachable (want within ~1 s)\n%s", streamed.Round(time.Millisecond),
			pgtest.Tail(n2.ServerLog(), 3000))
	}
}

package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/patronitest"
	"github.com/pgkeep/pgkeep/internal/pgtest"
)

// TestPatroniRejoiningLeaderDivergedWAL is the hostile test's failover on
// a real three-node Patroni cluster (archive_mode on): the leader's
// walsenders and archiver freeze, it commits a batch the replicas never
// get and completes a segment with it, and is killed. The new leader
// archives only <segment>.partial; the old leader's Patroni, before
// pg_rewind, runs archive_command on its leftover full segment. That
// segment holds WAL past the fork and used to be stored: a replica
// re-created before the new timeline archived the same segment replayed
// the lost batch, then could not stream ("record with incorrect
// prev-link") while patronictl showed it running.
func TestPatroniRejoiningLeaderDivergedWAL(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs"})
	etcd := patronitest.StartEtcd(t)
	c := patronitest.New(t, etcd, patronitest.Options{Scope: "dv", Nodes: 3, Pgkeep: pgkeepBin(t), PgkeepConfig: r.config})
	ctx := context.Background()
	c.StartNode(t, c.Nodes[0])
	old := c.WaitLeader(t, 2*time.Minute)
	oc := mustConn(t, old)
	execSQL(t, oc, "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)")
	insertBatch(t, oc, 1)
	if res := runPgkeep(t, append(append([]string{}, r.env...), "PGKEEP_POSTGRES_DSN="+old.DSN(), "PGKEEP_PGDATA="+old.DataDir), "", "backup"); res.code != 0 {
		t.Fatalf("backup: %s", res.stderr)
	}
	for _, n := range c.Nodes[1:] {
		c.StartNode(t, n)
	}
	for _, n := range c.Nodes[1:] {
		c.WaitStreaming(t, old, n, 3*time.Minute)
	}
	waitInRepo(t, r, switchWAL(t, oc))
	insertBatch(t, oc, 2) // the replicas have it: the fork is mid-segment
	for _, n := range c.Nodes[1:] {
		waitRows(t, n, "1,2 rows=1000")
	}

	// Freeze what would carry the next WAL anywhere, then commit batch 3
	// and enough filler to complete the segment it starts in.
	rows, err := oc.Query(ctx, "SELECT pid FROM pg_stat_activity WHERE backend_type IN ('walsender', 'archiver')")
	if err != nil {
		t.Fatal(err)
	}
	var frozen []int
	for rows.Next() {
		var pid int
		rows.Scan(&pid)
		frozen = append(frozen, pid)
	}
	rows.Close()
	if len(frozen) < 3 {
		t.Fatalf("found %d walsenders and archiver, want 3", len(frozen))
	}
	for _, pid := range frozen {
		syscall.Kill(pid, syscall.SIGSTOP)
	}
	insertBatch(t, oc, 3)
	var fork string
	if err := oc.QueryRow(ctx, "SELECT pg_walfile_name(pg_current_wal_lsn())").Scan(&fork); err != nil {
		t.Fatal(err)
	}
	execSQL(t, oc, "CREATE TABLE filler AS SELECT g, repeat(md5(g::text), 8) AS pad FROM generate_series(1, 100000) g")
	var now string
	if err := oc.QueryRow(ctx, "SELECT pg_walfile_name(pg_current_wal_lsn())").Scan(&now); err != nil || now <= fork {
		t.Fatalf("the lost WAL did not complete segment %s (now in %s, %v)", fork, now, err)
	}
	pgtest.WaitFor(t, 30*time.Second, fork+".ready on the old leader", func() (bool, error) {
		_, err := os.Stat(filepath.Join(old.DataDir, "pg_wal", "archive_status", fork+".ready"))
		return err == nil, nil
	})
	oc.Close(ctx)
	c.Kill(old)
	for _, pid := range frozen {
		syscall.Kill(pid, syscall.SIGKILL)
	}

	leader := c.WaitLeader(t, 2*time.Minute, old)
	pgtest.WaitFor(t, time.Minute, "the new timeline's history and "+fork+".partial in the repository", func() (bool, error) {
		_, e1 := os.Stat(filepath.Join(r.repoDir, "wal", "history", "00000002.history"))
		_, e2 := os.Stat(filepath.Join(r.repoDir, "wal", fork[:16], fork+".partial"))
		return e1 == nil && e2 == nil, nil
	})
	lc := mustConn(t, leader)
	insertBatch(t, lc, 4) // stays in timeline 2's copy of the fork segment, not archived

	// The old leader's Patroni archives its leftovers, rewinds, rejoins.
	c.StartNode(t, old)
	c.WaitStreaming(t, leader, old, 3*time.Minute)
	if _, err := os.Stat(filepath.Join(r.repoDir, "wal", fork[:16], fork)); !os.IsNotExist(err) {
		t.Fatalf("the old leader's diverged %s is in the repository (%v)", fork, err)
	}
	// Patroni ran archive_command on it and pgkeep refused it.
	if !strings.Contains(old.Log(), "refusing to archive diverged WAL") {
		t.Fatalf("the old leader's Patroni log has no refused push of %s:\n%s", fork, pgtest.Tail(old.Log(), 3000))
	}
	waitRows(t, old, "1,2,4 rows=1500")

	// A replica re-created in the window comes up with the leader's data.
	var replica *patronitest.Node
	for _, n := range c.Nodes {
		if n != leader && n != old {
			replica = n
		}
	}
	c.Patronictl(t, replica, "reinit", "dv", replica.Name, "--force")
	pgtest.WaitFor(t, 3*time.Minute, "pgkeep to re-create "+replica.Name, func() (bool, error) {
		return strings.Count(replica.Log(), "pgkeep create-replica: restored backup") >= 2, nil
	})
	c.WaitStreaming(t, leader, replica, 3*time.Minute)
	insertBatch(t, lc, 5)
	waitRows(t, replica, "1,2,4,5 rows=2000")
	waitRows(t, old, "1,2,4,5 rows=2000")
}

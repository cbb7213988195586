package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/pgtest"
	"github.com/pgkeep/pgkeep/internal/s3test"
	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/storage/s3"
)

const segSize = pg.DefaultSegmentSize

// bulkArchive is a backup on S3 followed by n switched segments, each
// holding one committed marker row.
type bulkArchive struct {
	r        *testRepo
	srv      *s3test.Server
	n        int
	first    pg.WALFile // the backup's first segment
	last     string     // the newest archived segment
	allMarks string
}

func newBulkArchive(t *testing.T, n int, extra ...string) *bulkArchive {
	t.Helper()
	srv := s3test.Start(t)
	r := newRepo(t, repoOpts{kind: "s3", s3: srv, extra: extra})
	primary := archivingCluster(t, r)
	conn := primary.Conn(t)
	primary.Exec(t, conn, "CREATE TABLE marks (n int PRIMARY KEY)")
	takeBackup(t, r, primary)
	a := &bulkArchive{r: r, srv: srv, n: n}
	var all []string
	for i := 1; i <= n; i++ {
		primary.Exec(t, conn, "INSERT INTO marks VALUES ($1)", i)
		if err := conn.QueryRow(context.Background(), "SELECT pg_walfile_name(pg_switch_wal())").Scan(&a.last); err != nil {
			t.Fatal(err)
		}
		all = append(all, fmt.Sprint(i))
	}
	a.allMarks = strings.Join(all, ",")
	waitArchived(t, primary, a.last, 2*time.Minute)
	primary.Stop(t) // nothing else may reach the repository

	var rows []struct {
		StartLSN string `json:"start_lsn"`
		Timeline uint32 `json:"timeline"`
	}
	if err := json.Unmarshal([]byte(r.mustRun(t, "backup", "list", "--json")), &rows); err != nil || len(rows) != 1 {
		t.Fatalf("backup list: %v (%d rows)", err, len(rows))
	}
	lsn, err := pg.ParseLSN(rows[0].StartLSN)
	if err != nil {
		t.Fatal(err)
	}
	a.first = lsn.Segment(rows[0].Timeline, segSize)
	return a
}

// segments are the names from the backup's first segment to the newest.
func (a *bulkArchive) segments(t *testing.T) []string {
	t.Helper()
	var out []string
	for wf := a.first; ; wf = wf.NextSegment(segSize) {
		out = append(out, wf.Name)
		if wf.Name == a.last {
			return out
		}
		if len(out) > 1000 {
			t.Fatalf("%s is not after %s", a.last, a.first.Name)
		}
	}
}

// deleteSegments removes archived segments from the bucket: recovery can
// then only find them in the prefetch directory.
func (a *bulkArchive) deleteSegments(t *testing.T, names []string) {
	t.Helper()
	b := a.srv.Backend(t, a.r.bucket, "cluster1", s3.Options{})
	for _, n := range names {
		wf, err := pg.ParseWALFileName(n)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Delete(context.Background(), repo.WALObjectName(wf)); err != nil {
			t.Fatalf("delete %s: %v", n, err)
		}
	}
}

// prefetchWatch samples a prefetch directory while it runs: the most bytes
// it ever held (finished and in-flight files) and every segment seen.
type prefetchWatch struct {
	dir     string
	maxSize atomic.Int64
	mu      sync.Mutex
	seen    map[string]bool
	stop    chan struct{}
	done    chan struct{}
}

func watchPrefetch(dir string) *prefetchWatch {
	w := &prefetchWatch{dir: dir, seen: map[string]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			w.sample()
			select {
			case <-w.stop:
				w.sample()
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	return w
}

func (w *prefetchWatch) sample() {
	entries, err := os.ReadDir(w.dir)
	if err != nil {
		return
	}
	var total int64
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && !fi.IsDir() && (len(e.Name()) == 24+1+64 || strings.HasSuffix(e.Name(), ".tmp")) {
			total += fi.Size()
			if len(e.Name()) == 24+1+64 {
				w.mu.Lock()
				w.seen[e.Name()[:24]] = true
				w.mu.Unlock()
			}
		}
	}
	if total > w.maxSize.Load() {
		w.maxSize.Store(total)
	}
}

func (w *prefetchWatch) finish() { close(w.stop); <-w.done }

// prefetched lists the segments in dir, sorted.
func prefetched(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("prefetch directory: %v", err)
	}
	var out []string
	for _, e := range entries {
		if len(e.Name()) == 24+1+64 {
			out = append(out, e.Name()[:24])
		}
	}
	sort.Strings(out)
	return out
}

func restoreLatest(t *testing.T, a *bulkArchive, w func(dir string)) (*pgtest.Cluster, string) {
	t.Helper()
	c, pdir := restoreLatestRunning(t, a, w)
	// The restore returns with the download still going on in the
	// background; these tests look at what it leaves once it has ended.
	waitBulkDone(t, pdir)
	return c, pdir
}

// restoreLatestRunning is restoreLatest without waiting for the
// background download.
func restoreLatestRunning(t *testing.T, a *bulkArchive, w func(dir string)) (*pgtest.Cluster, string) {
	t.Helper()
	dir := filepath.Join(pgtest.TempDir(t), "restored")
	pgtest.MkdirFor(t, dir)
	if w != nil {
		w(filepath.Join(dir, "pg_wal", "pgkeep", "prefetch"))
	}
	res := runPgkeep(t, a.r.env, "", "restore", "--pgdata", dir)
	if res.code != 0 {
		t.Fatalf("restore: exit %d\n%s", res.code, res.stderr)
	}
	t.Logf("restore (%s): %s", res.elapsed.Round(time.Millisecond), strings.TrimSpace(res.stdout))
	c := pgtest.Existing(t, dir, pgtest.Options{Env: a.r.env, Conf: []string{"archive_mode = off"}})
	return c, filepath.Join(dir, "pg_wal", "pgkeep", "prefetch")
}

// waitBulkDone waits for a restore's background bulk WAL download in dir
// to end: it removes its plan file on the way out.
func waitBulkDone(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, err := os.Stat(filepath.Join(dir, ".bulk.plan")); os.IsNotExist(err) {
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "bulk.log"))
			t.Fatalf("the background bulk WAL download did not end\n%s", log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRestoreBulkWAL: a restore to latest downloads every segment recovery
// needs into the prefetch directory while it writes the base files. To
// prove recovery read every one of them from there and none from the
// repository, they are all deleted from the bucket before PostgreSQL
// starts: recovery still reaches the last committed marker, exactly.
func TestRestoreBulkWAL(t *testing.T) {
	a := newBulkArchive(t, 16)
	c, pdir := restoreLatest(t, a, nil)
	want := a.segments(t)
	if got := prefetched(t, pdir); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("prefetch directory after restore holds %v, want every segment from the backup's start to the newest archived: %v", got, want)
	}
	a.deleteSegments(t, want)
	c.Start(t)
	waitRecoveryDone(t, c, false)
	if got := marks(t, c); got != a.allMarks {
		t.Fatalf("marks %s, want %s\n%s", got, a.allMarks, pgtest.Tail(c.Log(), 3000))
	}
	if left := prefetched(t, pdir); len(left) != 0 {
		t.Fatalf("recovery left prefetched segments unused: %v", left)
	}
}

// TestRestoreBulkWALBudget: with restore.wal_prefetch_bytes of 4 segments
// (and wal.prefetch 8), the restore's download holds the first 4 segments
// until recovery takes them, the prefetch directory never holds more than
// 4 segments' bytes during the restore and the whole recovery, and the
// later segments arrive there too (the background download following
// recovery in its window). The first 4 are deleted from the bucket before
// PostgreSQL starts, so recovery can only have read them locally.
func TestRestoreBulkWALBudget(t *testing.T) {
	const budget = 4 * segSize
	a := newBulkArchive(t, 12, "restore:", fmt.Sprintf("  wal_prefetch_bytes: %d", budget), "wal:", "  prefetch: 8")
	var w *prefetchWatch
	c, pdir := restoreLatestRunning(t, a, func(dir string) { w = watchPrefetch(dir) })
	defer func() {
		if w != nil {
			w.finish()
		}
	}()
	all := a.segments(t)
	// The download fills its window and waits there, alive, for recovery.
	deadline := time.Now().Add(time.Minute)
	for len(prefetched(t, pdir)) < 4 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // room for a fifth, if it were wrongly fetched
	if got := prefetched(t, pdir); strings.Join(got, ",") != strings.Join(all[:4], ",") {
		t.Fatalf("prefetch directory after restore holds %v, want the first 4 segments %v", got, all[:4])
	}
	if _, err := os.Stat(filepath.Join(pdir, ".bulk.plan")); err != nil {
		t.Fatalf("the background download ended with its window full (plan file: %v); it should wait for recovery", err)
	}
	a.deleteSegments(t, all[:4])
	c.Start(t)
	waitRecoveryDone(t, c, false)
	waitBulkDone(t, pdir) // it ends with recovery
	w.finish()
	max := w.maxSize.Load()
	seen := w.seen
	w = nil
	if got := marks(t, c); got != a.allMarks {
		t.Fatalf("marks %s, want %s\n%s", got, a.allMarks, pgtest.Tail(c.Log(), 3000))
	}
	if max > budget {
		t.Fatalf("the prefetch directory held %d bytes at one point, over restore.wal_prefetch_bytes %d", max, budget)
	}
	resumed := 0
	for _, n := range all[4:] {
		if seen[n] {
			resumed++
		}
	}
	if resumed == 0 {
		t.Fatalf("no later segment came through the prefetch directory after the restore's 4 (seen: %v)", seen)
	}
	t.Logf("most bytes in the prefetch directory: %d (budget %d); %d of the later %d segments came through the prefetch directory", max, budget, resumed, len(all)-4)
}

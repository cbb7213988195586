package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgkeep/pgkeep/internal/patronitest"
	"github.com/pgkeep/pgkeep/internal/pgtest"
)

// TestReplicaBench is bench/replica.sh's measurement, not a regular test:
// it runs only with PGKEEP_BENCH_REPLICA=1.
//
// One Patroni leader holds a pgbench database (PGKEEP_BENCH_SCALE, default
// 100) and a pgkeep backup of it. Two more members provision themselves
// in turn, PGKEEP_BENCH_REPS times each (default 3), alternating which goes
// first: one with create_replica_methods [pgkeep, basebackup], one with
// [basebackup] only. Each provisioning is timed from the start of Patroni
// on an empty data directory (PGKEEP_BENCH_MODE=fresh, the default) or from
// `patronictl reinit --force` of a running replica (PGKEEP_BENCH_MODE=reinit;
// pgkeep's keep_data then makes it a delta restore) until the leader's
// pg_stat_replication shows the member streaming on a connection opened
// after the start and the member returns a row the leader wrote just before.
//
// Bytes read from the primary are counted exactly by a TCP proxy in front
// of the leader: the leader advertises the proxy's port as its
// connect_address, so every replication connection (pg_basebackup's
// BASE_BACKUP and WAL streams, the new replica's walreceiver) passes
// through it, while the benchmark's own queries go to the leader directly.
// Bytes on connections whose client sent BASE_BACKUP are counted apart.
// The leader's log (log_replication_commands=on) is also searched for
// BASE_BACKUP during each provisioning. PGKEEP_BENCH_PROXY=off leaves the
// proxy out (times without it; bytes are then not counted).
// PGKEEP_BENCH_LOGS=1 logs each member's Patroni log (which holds pgkeep's)
// for the run.
func TestReplicaBench(t *testing.T) {
	if os.Getenv("PGKEEP_BENCH_REPLICA") == "" {
		t.Skip("benchmark, skipped by default (it takes many minutes): set PGKEEP_BENCH_REPLICA=1 to run it, or run bench/replica.sh")
	}
	scale := benchEnvInt(t, "PGKEEP_BENCH_SCALE", 100)
	reps := benchEnvInt(t, "PGKEEP_BENCH_REPS", 3)
	mode := os.Getenv("PGKEEP_BENCH_MODE")
	if mode == "" {
		mode = "fresh"
	}
	if mode != "fresh" && mode != "reinit" {
		t.Fatalf("PGKEEP_BENCH_MODE=%q: want fresh or reinit", mode)
	}
	// Every wait below is bounded so that a failure still runs the
	// cleanups (go test's own -timeout would not).
	provisionTimeout := time.Duration(benchEnvInt(t, "PGKEEP_BENCH_PROVISION_TIMEOUT_S", 900)) * time.Second
	ctx := context.Background()

	proxy := startCountingProxy(t)
	counted := os.Getenv("PGKEEP_BENCH_PROXY") != "off"
	connectPorts := map[int]int{0: proxy.port}
	if !counted {
		connectPorts = nil
	}
	r := newRepo(t, repoOpts{kind: "fs"})
	etcd := patronitest.StartEtcd(t)
	methods := map[string]int{"pgkeep": 1, "basebackup": 2} // method -> index in c.Nodes
	c := patronitest.New(t, etcd, patronitest.Options{
		Scope: "rb", Nodes: 3, Pgkeep: pgkeepBin(t), PgkeepConfig: r.config,
		ReplicaMethods: map[int][]string{1: {"pgkeep", "basebackup"}, 2: {"basebackup"}},
		ConnectPorts:   connectPorts,
	})
	n1 := c.Nodes[0]
	proxy.setTarget(fmt.Sprintf("127.0.0.1:%d", n1.PGPort))

	c.StartNode(t, n1)
	leader := c.WaitLeader(t, 2*time.Minute)
	if leader != n1 {
		t.Fatalf("leader is %s, want %s", leader.Name, n1.Name)
	}
	lc := mustConn(t, leader)

	start := time.Now()
	benchRun(t, 60*time.Minute, []string{"PGPASSWORD=postgres-secret"}, filepath.Join(pgtest.BinDir(), "pgbench"),
		"-i", "-s", strconv.Itoa(scale), "-q", "-h", "127.0.0.1", "-p", strconv.Itoa(leader.PGPort), "-U", "postgres", "postgres")
	t.Logf("pgbench -i -s %d: %s", scale, time.Since(start).Round(time.Second))
	execSQL(t, lc, "CREATE TABLE bench_mark (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
	execSQL(t, lc, "CHECKPOINT")

	start = time.Now()
	res := runPgkeep(t, append(append([]string{}, r.env...),
		"PGKEEP_POSTGRES_DSN="+leader.DSN(), "PGKEEP_PGDATA="+leader.DataDir), "", "backup")
	if res.code != 0 {
		t.Fatalf("pgkeep backup on the leader: exit %d\n%s", res.code, res.stderr)
	}
	t.Logf("pgkeep backup: %s", time.Since(start).Round(time.Second))

	var dbBytes int64
	if err := lc.QueryRow(ctx, "SELECT sum(pg_database_size(datname))::bigint FROM pg_database").Scan(&dbBytes); err != nil {
		t.Fatal(err)
	}
	backupBytes := benchDirSize(filepath.Join(r.repoDir, "backups"))
	repoBytes := benchDirSize(r.repoDir)

	mark := 0
	var rows []benchRow
	provision := func(method string, measured bool, rep int) {
		t.Helper()
		n := c.Nodes[methods[method]]
		mark++
		if _, err := lc.Exec(ctx, "INSERT INTO bench_mark (id) VALUES ($1)", mark); err != nil {
			t.Fatal(err)
		}
		patroniOff, serverOff := len(n.Log()), len(leader.ServerLog())
		total0, base0 := proxy.total.Load(), proxy.base.Load()
		t0 := time.Now()
		if mode == "reinit" && measured {
			c.Patronictl(t, n, "reinit", c.Scope, n.Name, "--force")
		} else {
			c.StartNode(t, n)
		}
		created, done := benchWaitReplica(t, lc, n, method, patroniOff, mark, t0, provisionTimeout)
		total1, base1 := proxy.total.Load(), proxy.base.Load()
		log := benchFrom(n.Log(), patroniOff)
		if !strings.Contains(log, "replica has been created using "+method) {
			t.Fatalf("%s was not created with %s:\n%s", n.Name, method, pgtest.Tail(log, 4000))
		}
		row := benchRow{
			rep: rep, method: method,
			create: created.Sub(t0), total: done.Sub(t0),
			fromPrimary: total1 - total0, baseBackup: base1 - base0,
			logBaseBackup: strings.Contains(benchFrom(leader.ServerLog(), serverOff), "BASE_BACKUP"),
		}
		if !counted {
			row.fromPrimary, row.baseBackup = -1, -1
		}
		if m := regexp.MustCompile(`\(\d+ files written, \d+ kept, [^)]* downloaded\)`).FindString(log); m != "" {
			row.note = strings.Trim(m, "()")
		}
		if method == "pgkeep" && (row.logBaseBackup || row.baseBackup > 0) {
			t.Errorf("the primary served a base backup while pgkeep provisioned %s", n.Name)
		}
		if os.Getenv("PGKEEP_BENCH_LOGS") != "" {
			t.Logf("--- %s Patroni log during the %s run ---\n%s", n.Name, method, pgtest.Tail(benchFrom(n.Log(), patroniOff), 20000))
			t.Logf("--- %s PostgreSQL log during the %s run ---\n%s", n.Name, method, pgtest.Tail(n.ServerLog(), 20000))
		}
		if measured {
			rows = append(rows, row)
			t.Logf("rep %d %-10s create %6.1fs  start+catch-up %6.1fs  total %6.1fs  from primary %s (BASE_BACKUP %s)  %s",
				rep, method, row.create.Seconds(), (row.total - row.create).Seconds(), row.total.Seconds(),
				benchMiB(row.fromPrimary), benchMiB(row.baseBackup), row.note)
		}
		if mode == "fresh" {
			c.Kill(n)
			benchRemoveAll(t, n.DataDir)
		}
		time.Sleep(2 * time.Second) // let the leader's walsender go before the next run
	}

	if mode == "reinit" {
		// Running replicas to re-initialise; not measured.
		provision("pgkeep", false, 0)
		provision("basebackup", false, 0)
	}
	for rep := 1; rep <= reps; rep++ {
		order := []string{"pgkeep", "basebackup"}
		if rep%2 == 0 {
			order[0], order[1] = order[1], order[0]
		}
		for _, m := range order {
			provision(m, true, rep)
		}
	}

	// The report goes to stdout, or to the file PGKEEP_BENCH_REPORT names
	// (bench/replica.sh prints it after go test's output).
	report := benchReport(rows, scale, reps, mode, counted, dbBytes, backupBytes, repoBytes)
	if f := os.Getenv("PGKEEP_BENCH_REPORT"); f != "" {
		if err := os.WriteFile(f, []byte(report), 0o644); err != nil {
			t.Fatal(err)
		}
	} else {
		fmt.Print(report)
	}
}

type benchRow struct {
	rep                     int
	method                  string
	create, total           time.Duration
	fromPrimary, baseBackup int64
	logBaseBackup           bool
	note                    string
}

// benchWaitReplica polls until n's Patroni has created the replica (the
// first return) and n streams from the leader on a connection opened after
// t0 and holds bench_mark row mark (the second).
func benchWaitReplica(t *testing.T, lc *pgx.Conn, n *patronitest.Node, method string, patroniOff, mark int, t0 time.Time, timeout time.Duration) (created, done time.Time) {
	t.Helper()
	ctx := context.Background()
	var rc *pgx.Conn
	defer func() {
		if rc != nil {
			rc.Close(ctx)
		}
	}()
	streaming := false
	deadline := t0.Add(timeout)
	for time.Now().Before(deadline) {
		now := time.Now()
		if created.IsZero() {
			log := benchFrom(n.Log(), patroniOff)
			if strings.Contains(log, "replica has been created using") {
				created = now
			} else if strings.Contains(log, "Error creating replica using method "+method) ||
				strings.Contains(log, "Error when fetching backup") {
				t.Fatalf("%s: creating the replica with %s failed:\n%s", n.Name, method, pgtest.Tail(log, 4000))
			}
		}
		if !created.IsZero() && !streaming {
			qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			var k int
			err := lc.QueryRow(qctx, "SELECT count(*) FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming' AND backend_start >= $2", n.Name, t0).Scan(&k)
			cancel()
			if err != nil {
				t.Fatalf("pg_stat_replication on the leader: %v", err)
			}
			streaming = k == 1
		}
		if streaming {
			qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if rc == nil {
				rc, _ = n.Conn(qctx)
			}
			if rc != nil {
				var got int
				if err := rc.QueryRow(qctx, "SELECT coalesce(max(id), 0) FROM bench_mark").Scan(&got); err != nil {
					rc.Close(ctx)
					rc = nil
				} else if got >= mark {
					cancel()
					return created, time.Now()
				}
			}
			cancel()
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s to be created with %s and stream (created: %v, streaming: %v)\n%s",
		timeout, n.Name, method, !created.IsZero(), streaming, pgtest.Tail(n.Log(), 4000))
	return
}

func benchReport(rows []benchRow, scale, reps int, mode string, counted bool, dbBytes, backupBytes, repoBytes int64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n== replica provisioning: pgkeep create-replica vs Patroni basebackup\n")
	fmt.Fprintf(&b, "pgbench scale %d: databases %s on the leader; pgkeep backup %s in the repository (%s with archived WAL)\n",
		scale, benchMiB(dbBytes), benchMiB(backupBytes), benchMiB(repoBytes))
	fmt.Fprintf(&b, "mode %s, %d reps per method (order alternating), %d cores, Patroni 3.0.2, PostgreSQL 15, 127.0.0.1 only\n",
		mode, reps, runtime.NumCPU())
	fmt.Fprintf(&b, "create = until Patroni logs \"replica has been created\"; total = until the member streams and has the leader's latest row\n")
	if counted {
		fmt.Fprintf(&b, "from primary = bytes the leader sent on replication connections (counting TCP proxy); BASE_BACKUP = of those, on connections that ran BASE_BACKUP\n\n")
	} else {
		fmt.Fprintf(&b, "PGKEEP_BENCH_PROXY=off: no proxy in front of the leader, bytes not counted\n\n")
	}
	fmt.Fprintf(&b, "%-4s %-11s %9s %16s %9s %15s %13s %14s  %s\n", "rep", "method", "create s", "start+catchup s", "total s", "from primary", "BASE_BACKUP", "BB in pg log", "pgkeep")
	for _, r := range rows {
		fmt.Fprintf(&b, "%-4d %-11s %9.1f %16.1f %9.1f %15s %13s %14v  %s\n", r.rep, r.method,
			r.create.Seconds(), (r.total - r.create).Seconds(), r.total.Seconds(),
			benchMiB(r.fromPrimary), benchMiB(r.baseBackup), r.logBaseBackup, r.note)
	}
	med := map[string]benchRow{}
	fmt.Fprintf(&b, "\n%-16s %9s %16s %9s %15s %13s %14s\n", "median", "create s", "start+catchup s", "total s", "from primary", "BASE_BACKUP", "BB in pg log")
	for _, m := range []string{"pgkeep", "basebackup"} {
		var create, total []float64
		var from, base []int64
		anyLog := 0
		for _, r := range rows {
			if r.method != m {
				continue
			}
			create = append(create, r.create.Seconds())
			total = append(total, r.total.Seconds())
			from = append(from, r.fromPrimary)
			base = append(base, r.baseBackup)
			if r.logBaseBackup {
				anyLog++
			}
		}
		x := benchRow{
			create:      time.Duration(benchMedian(create) * float64(time.Second)),
			total:       time.Duration(benchMedian(total) * float64(time.Second)),
			fromPrimary: int64(benchMedian(benchFloats(from))), baseBackup: int64(benchMedian(benchFloats(base))),
		}
		med[m] = x
		fmt.Fprintf(&b, "%-16s %9.1f %16.1f %9.1f %15s %13s %11d/%d\n", m, x.create.Seconds(), (x.total - x.create).Seconds(),
			x.total.Seconds(), benchMiB(x.fromPrimary), benchMiB(x.baseBackup), anyLog, len(total))
	}
	k, bb := med["pgkeep"], med["basebackup"]
	ratio := k.total.Seconds() / bb.total.Seconds()
	fmt.Fprintf(&b, "\npgkeep/basebackup time ratio (median total): %.2f (create phase: %.2f)\n", ratio, k.create.Seconds()/bb.create.Seconds())
	if counted {
		fmt.Fprintf(&b, "bytes from the primary, median: pgkeep %d (%s), basebackup %d (%s)\n", k.fromPrimary, benchMiB(k.fromPrimary), bb.fromPrimary, benchMiB(bb.fromPrimary))
	}
	maxBase, logs := int64(0), 0
	for _, r := range rows {
		if r.method == "pgkeep" {
			maxBase = max(maxBase, r.baseBackup)
			if r.logBaseBackup {
				logs++
			}
		}
	}
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	fmt.Fprintf(&b, "target faster than basebackup: %s (ratio %.2f)\n", verdict(ratio < 1), ratio)
	if counted {
		fmt.Fprintf(&b, "target no base-backup traffic from the primary during pgkeep provisioning: %s (BASE_BACKUP bytes max %d, BASE_BACKUP in the leader's log %d times)\n",
			verdict(maxBase == 0 && logs == 0), maxBase, logs)
	} else {
		fmt.Fprintf(&b, "target no base-backup traffic from the primary during pgkeep provisioning: %s by the leader's log (BASE_BACKUP %d times; bytes not counted)\n",
			verdict(logs == 0), logs)
	}
	return b.String()
}

// benchFrom is what a log gained since it was off bytes long.
func benchFrom(log string, off int) string {
	if off > len(log) {
		return log
	}
	return log[off:]
}

func benchFloats(v []int64) []float64 {
	f := make([]float64, len(v))
	for i, x := range v {
		f[i] = float64(x)
	}
	return f
}

func benchMedian(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// benchMiB writes a byte count in MiB, or KiB when below 1 MiB.
func benchMiB(n int64) string {
	if n < 0 {
		return "n/a"
	}
	if n < 1<<20 {
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

func benchEnvInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// benchRun runs a program as the postgres user, bounded by timeout.
func benchRun(t *testing.T, timeout time.Duration, env []string, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append([]string{"PATH=/usr/bin:/bin", "HOME=/tmp", "LANG=C.UTF-8"}, env...)
	cmd.Dir = "/"
	pgtest.AsPostgres(t, cmd)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, pgtest.Tail(string(out), 3000))
	}
}

func benchDirSize(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// benchRemoveAll removes a killed member's data directory; its last
// PostgreSQL children may still be exiting, so it retries briefly.
func benchRemoveAll(t *testing.T, dir string) {
	t.Helper()
	var err error
	for i := 0; i < 50; i++ {
		if err = os.RemoveAll(dir); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("remove %s: %v", dir, err)
}

// countingProxy forwards 127.0.0.1 connections to the leader and counts the
// bytes the leader sends (total), and of those the bytes on connections
// whose client sent BASE_BACKUP (base).
type countingProxy struct {
	ln     net.Listener
	port   int
	target atomic.Value // string
	total  atomic.Int64
	base   atomic.Int64

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startCountingProxy(t *testing.T) *countingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &countingProxy{ln: ln, port: ln.Addr().(*net.TCPAddr).Port, conns: map[net.Conn]struct{}{}}
	p.target.Store("")
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *countingProxy) setTarget(addr string) { p.target.Store(addr) }

func (p *countingProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *countingProxy) track(c net.Conn, add bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false // closed
	}
	if add {
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
	return true
}

func (p *countingProxy) serve(client net.Conn) {
	defer p.wg.Done()
	defer client.Close()
	target := p.target.Load().(string)
	if target == "" {
		return
	}
	server, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		return
	}
	defer server.Close()
	if !p.track(client, true) || !p.track(server, true) {
		return
	}
	defer p.track(client, false)
	defer p.track(server, false)

	var isBase atomic.Bool
	done := make(chan struct{})
	go func() { // client -> server: small; watch for BASE_BACKUP
		defer close(done)
		needle := []byte("BASE_BACKUP")
		buf := make([]byte, 64<<10)
		var tail []byte
		for {
			n, err := client.Read(buf)
			if n > 0 {
				if !isBase.Load() {
					w := append(tail, buf[:n]...)
					if bytes.Contains(w, needle) {
						isBase.Store(true)
					}
					tail = append([]byte(nil), w[max(0, len(w)-len(needle)+1):]...)
				}
				if _, werr := server.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		server.Close()
		client.Close()
	}()
	buf := make([]byte, 256<<10) // server -> client: counted
	for {
		n, err := server.Read(buf)
		if n > 0 {
			p.total.Add(int64(n))
			if isBase.Load() {
				p.base.Add(int64(n))
			}
			if _, werr := client.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	client.Close()
	server.Close()
	<-done
}

func (p *countingProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}

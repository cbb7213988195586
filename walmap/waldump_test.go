package walmap

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgkeep/pgkeep/internal/pgtest"
	"github.com/pgkeep/pgkeep/pg"
)

type blockKey struct {
	RelFork
	Block uint32
}

// waldump is pg_waldump's view of the records starting in one segment.
type waldump struct {
	records int
	blocks  map[blockKey]bool
}

var (
	waldumpLSN   = regexp.MustCompile(`^rmgr: .*? lsn: ([0-9A-F]+/[0-9A-F]+),`)
	waldumpBlock = regexp.MustCompile(`^\s+blkref #\d+: rel (\d+)/(\d+)/(\d+) fork (\w+) blk (\d+)`)
	forkNames    = map[string]uint8{"main": ForkMain, "fsm": ForkFSM, "vm": ForkVM, "init": ForkInit}
)

// runWaldump runs pg_waldump --bkp-details over seg (and the next segment,
// for the record that straddles the boundary) and keeps the records that
// start in [start, end).
func runWaldump(t *testing.T, dir, seg, next string, start, end pg.LSN) waldump {
	t.Helper()
	args := []string{"--bkp-details", "-p", dir, seg}
	if next != "" {
		args = append(args, next)
	}
	cmd := exec.Command(filepath.Join(pgtest.BinDir(), "pg_waldump"), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil && !strings.Contains(stderr.String(), "error in WAL record") {
		t.Fatalf("pg_waldump %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	d := waldump{blocks: make(map[blockKey]bool)}
	in := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	for sc.Scan() {
		line := sc.Text()
		if m := waldumpLSN.FindStringSubmatch(line); m != nil {
			lsn, err := pg.ParseLSN(m[1])
			if err != nil {
				t.Fatal(err)
			}
			in = lsn >= start && lsn < end
			if in {
				d.records++
			}
			continue
		}
		if m := waldumpBlock.FindStringSubmatch(line); m != nil && in {
			var k blockKey
			n := func(s string) uint32 { v, _ := strconv.ParseUint(s, 10, 32); return uint32(v) }
			k.Spc, k.DB, k.Rel, k.Block = n(m[1]), n(m[2]), n(m[3]), n(m[5])
			f, ok := forkNames[m[4]]
			if !ok {
				t.Fatalf("pg_waldump fork %q in %q", m[4], line)
			}
			k.Fork = f
			d.blocks[k] = true
		}
	}
	return d
}

// walked is the walker's view of one segment.
type walkedSeg struct {
	stats   map[string]int // record features seen, to prove the workload's breadth
	name    string
	data    []byte
	w       *Walked
	records int
	blocks  map[blockKey]bool
	m       *Map
}

func walkSeg(t *testing.T, name string, data []byte) *walkedSeg {
	t.Helper()
	s := &walkedSeg{name: name, data: data, blocks: make(map[blockKey]bool), stats: make(map[string]int)}
	w, err := Walk(data, name, uint32(pg.DefaultSegmentSize), func(r *Record) error {
		s.records++
		if r.HasTopXID {
			s.stats["toplevel-xid"]++
		}
		for _, b := range r.Blocks {
			s.blocks[blockKey{b.RelFork, b.Block}] = true
			if b.SameRel {
				s.stats["same-rel"]++
			}
			if b.HasImage {
				s.stats[fmt.Sprintf("image-%d", b.Compression)]++
				if b.HoleLen > 0 {
					s.stats["image-hole"]++
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", name, err)
	}
	s.w = w
	if s.m, err = Build(data, name, uint32(pg.DefaultSegmentSize)); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestWalkerMatchesWaldump runs PostgreSQL 15 through a varied workload,
// archives every segment, and compares the walker's records and changed
// blocks with pg_waldump's on each one.
func TestWalkerMatchesWaldump(t *testing.T) {
	if _, err := os.Stat(filepath.Join(pgtest.BinDir(), "pg_waldump")); err != nil {
		t.Skip("no PostgreSQL binaries:", err)
	}
	dir := pgtest.TempDir(t)
	arch := pgtest.MkdirFor(t, filepath.Join(dir, "archive"))
	tsdir := pgtest.MkdirFor(t, filepath.Join(dir, "tblspc"))
	c := pgtest.New(t, dir, pgtest.Options{
		InitDBArgs: []string{"--data-checksums"},
		Conf: []string{
			"archive_mode = on",
			fmt.Sprintf("archive_command = 'cp %%p %s/%%f'", arch),
			"wal_level = logical",
			"max_wal_size = '2GB'",
			"checkpoint_timeout = '30s'",
			"wal_compression = off",
		},
	})
	c.Start(t)
	conn := c.Conn(t)
	exec := func(sql string) { t.Helper(); c.Exec(t, conn, sql) }
	pgbench := func(args ...string) {
		t.Helper()
		pgtest.Run(t, nil, "pgbench", append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-U", "postgres"}, append(args, "postgres")...)...)
	}
	switchWAL := func() { t.Helper(); exec("SELECT pg_switch_wal()") }

	pgbench("-i", "-s", "8", "-q")
	exec("CREATE TABLE t5 (id int, v text)")
	exec("INSERT INTO t5 SELECT g, repeat('y', 200) FROM generate_series(1, 20000) g")
	switchWAL()
	pgbench("-T", "5", "-c", "4")
	for _, method := range []string{"lz4", "zstd", "pglz", "off"} {
		exec("ALTER SYSTEM SET wal_compression = '" + method + "'")
		exec("SELECT pg_reload_conf()")
		time.Sleep(200 * time.Millisecond)
		exec("CHECKPOINT") // the next changes write full-page images
		pgbench("-T", "1", "-c", "2")
	}
	// DDL: creates, index builds (XLOG_FPI), drops, rewrites, truncation.
	exec("CREATE TABLE t1 (id int PRIMARY KEY, v text)")
	exec("INSERT INTO t1 SELECT g, repeat('x', 100) FROM generate_series(1, 30000) g")
	exec("CREATE INDEX t1_v ON t1 (v, id)")
	exec("DELETE FROM t1 WHERE id > 5000")
	exec("VACUUM t1") // truncates the heap: XLOG_SMGR_TRUNCATE
	exec("VACUUM FULL pgbench_tellers")
	exec("TRUNCATE pgbench_history")
	exec("BEGIN; CREATE TABLE t2 (a int); INSERT INTO t2 SELECT generate_series(1, 1000); TRUNCATE t2; COMMIT")
	exec("DROP TABLE t1")
	// Subtransactions under wal_level=logical: block id 252.
	exec("CREATE TABLE t3 (a int)")
	exec("BEGIN; INSERT INTO t3 VALUES (1); SAVEPOINT s1; INSERT INTO t3 SELECT generate_series(1, 500); SAVEPOINT s2; INSERT INTO t3 VALUES (2); RELEASE s2; COMMIT")
	switchWAL()
	exec("CREATE DATABASE dwal STRATEGY wal_log")
	exec("CREATE DATABASE dcopy STRATEGY file_copy")
	exec("DROP DATABASE dwal")
	exec("DELETE FROM t5 WHERE id > 2000")
	exec("VACUUM t5") // truncates a heap created in an earlier segment
	exec(fmt.Sprintf("CREATE TABLESPACE ts1 LOCATION '%s'", tsdir))
	exec("CREATE TABLE t4 (a int) TABLESPACE ts1")
	exec("INSERT INTO t4 SELECT generate_series(1, 10000)")
	exec("DROP TABLE t4")
	exec("DROP TABLESPACE ts1")
	pgbench("-T", "2", "-c", "2")
	switchWAL()
	var last string
	ctx := context.Background()
	if err := conn.QueryRow(ctx, "SELECT pg_walfile_name(pg_current_wal_lsn())").Scan(&last); err != nil {
		t.Fatal(err)
	}
	switchWAL()
	pgtest.WaitFor(t, 60*time.Second, "archiving of "+last, func() (bool, error) {
		var got *string
		err := conn.QueryRow(ctx, "SELECT last_archived_wal FROM pg_stat_archiver").Scan(&got)
		return err == nil && got != nil && *got >= last, err
	})
	_ = pgx.ErrNoRows

	ents, err := os.ReadDir(arch)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if f, err := pg.ParseWALFileName(e.Name()); err == nil && f.Kind == pg.KindSegment {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	if len(names) < 5 {
		t.Fatalf("only %d archived segments", len(names))
	}
	if keep := os.Getenv("PGKEEP_WALMAP_KEEP"); keep != "" {
		os.MkdirAll(keep, 0o755)
		for _, n := range names {
			b, _ := os.ReadFile(filepath.Join(arch, n))
			os.WriteFile(filepath.Join(keep, n), b, 0o644)
		}
	}
	segs := make([]*walkedSeg, len(names))
	for i, n := range names {
		b, err := os.ReadFile(filepath.Join(arch, n))
		if err != nil {
			t.Fatal(err)
		}
		segs[i] = walkSeg(t, n, b)
	}
	var totalBlocks, totalRecords, switches, tails int
	for i, s := range segs {
		next := ""
		if i+1 < len(segs) {
			next = segs[i+1].name
		}
		// The last record, when it continues in the next segment and could
		// not be decoded from this one alone, comes from the stitch.
		if tl := s.w.Tail; tl != nil {
			tails++
			if !tl.Applied {
				if next == "" {
					t.Fatalf("%s: unfinished last record and no next segment", s.name)
				}
				r, err := stitch(layouts[s.w.Magic], tl, segs[i+1].w.Head)
				if err != nil {
					t.Fatalf("%s: stitch: %v", s.name, err)
				}
				s.records++
				for _, b := range r.Blocks {
					s.blocks[blockKey{b.RelFork, b.Block}] = true
				}
			}
		}
		switch s.w.Reason {
		case EndSwitch:
			switches++
		case EndComplete:
		default:
			t.Errorf("%s: walk ended %s at %s: %s", s.name, s.w.Reason, s.w.ValidEnd, s.w.Detail)
		}
		d := runWaldump(t, arch, s.name, next, s.w.Start, s.w.End)
		if d.records != s.records {
			t.Errorf("%s: %d records, pg_waldump %d", s.name, s.records, d.records)
		}
		for k := range d.blocks {
			if !s.blocks[k] {
				t.Errorf("%s: pg_waldump's block %v %d missing", s.name, k.RelFork, k.Block)
			}
		}
		for k := range s.blocks {
			if !d.blocks[k] {
				t.Errorf("%s: block %v %d not in pg_waldump's", s.name, k.RelFork, k.Block)
			}
		}
		// The map: its blocks are walked blocks, and a walked block it lacks
		// lies at or above its fork's limit (forgotten by a truncate/create).
		mapped := make(map[blockKey]bool)
		for _, f := range s.m.Forks {
			for _, b := range f.Blocks {
				k := blockKey{f.RelFork, b}
				mapped[k] = true
				if !s.blocks[k] {
					t.Errorf("%s: mapped block %v %d was not walked", s.name, f.RelFork, b)
				}
			}
		}
		for k := range s.blocks {
			if mapped[k] {
				continue
			}
			f := s.m.Fork(k.RelFork)
			if tl := s.w.Tail; tl != nil && !tl.Applied {
				continue // the stitched record's blocks join in Merge
			}
			if f == nil || k.Block < f.Limit {
				t.Errorf("%s: walked block %v %d is not in the map (fork %+v)", s.name, k.RelFork, k.Block, f)
			}
		}
		if len(s.m.Unknown) > 0 {
			t.Errorf("%s: unknown markers %+v", s.name, s.m.Unknown)
		}
		totalBlocks += len(d.blocks)
		totalRecords += d.records
	}
	t.Logf("%d segments, %d records, %d distinct blocks per segment summed, %d switches, %d records straddling segments: equal to pg_waldump",
		len(segs), totalRecords, totalBlocks, switches, tails)
	stats := map[string]int{}
	for _, s := range segs {
		for k, v := range s.stats {
			stats[k] += v
		}
	}
	t.Logf("features: %v (image-N: compression 0 none, 1 pglz, 2 lz4, 3 zstd)", stats)
	for _, k := range []string{"toplevel-xid", "same-rel", "image-hole", "image-0", "image-1", "image-2", "image-3"} {
		if stats[k] == 0 {
			t.Errorf("no record with %s in the workload", k)
		}
	}
	if switches < 3 || tails == 0 {
		t.Errorf("workload too narrow: %d switches, %d straddling records", switches, tails)
	}
	maps := make([]*Map, len(segs))
	for i, s := range segs {
		maps[i] = s.m
	}
	checkRealMaps(t, segs, maps)
	checkCut(t, segs)
}

package walmap

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/pgtest"
	"github.com/pgkeep/pgkeep/pg"
)

// TestWalkerOverwriteContrecord crashes PostgreSQL 15 in the middle of a
// record that spans segments (its continuation lost), lets crash recovery
// write XLOG_OVERWRITE_CONTRECORD over it, and checks that the walker and
// Merge drop the abandoned record exactly as pg_waldump does.
func TestWalkerOverwriteContrecord(t *testing.T) {
	if _, err := os.Stat(filepath.Join(pgtest.BinDir(), "pg_waldump")); err != nil {
		t.Skip("no PostgreSQL binaries:", err)
	}
	dir := pgtest.TempDir(t)
	arch := pgtest.MkdirFor(t, filepath.Join(dir, "archive"))
	c := pgtest.New(t, dir, pgtest.Options{Conf: []string{
		"archive_mode = on",
		fmt.Sprintf("archive_command = 'cp %%p %s/%%f'", arch),
		"wal_level = logical",
		"max_wal_size = '1GB'",
	}})
	c.Start(t)
	ctx := context.Background()
	conn := c.Conn(t)
	c.Exec(t, conn, "CREATE TABLE t (a int)")
	c.Exec(t, conn, "CHECKPOINT")
	var before string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&before); err != nil {
		t.Fatal(err)
	}
	// 20 MiB of logical message: one record over at least two boundaries,
	// then a commit so that all of it is flushed.
	c.Exec(t, conn, "SELECT pg_logical_emit_message(false, 'walmap', repeat('x', 20*1024*1024))")
	c.Exec(t, conn, "INSERT INTO t VALUES (1)")
	conn.Close(ctx)
	pgtest.Run(t, nil, "pg_ctl", "-D", c.DataDir, "-m", "immediate", "-w", "stop")
	lsn, err := pg.ParseLSN(before)
	if err != nil {
		t.Fatal(err)
	}
	start := lsn.Segment(1, pg.DefaultSegmentSize)
	// Lose every segment after the one the record starts in.
	walDir := filepath.Join(c.DataDir, "pg_wal")
	ents, _ := os.ReadDir(walDir)
	for _, e := range ents {
		if f, err := pg.ParseWALFileName(e.Name()); err == nil && f.Kind == pg.KindSegment && e.Name() > start.Name {
			os.Remove(filepath.Join(walDir, e.Name()))
			os.Remove(filepath.Join(walDir, "archive_status", e.Name()+".ready"))
			os.Remove(filepath.Join(walDir, "archive_status", e.Name()+".done"))
			os.Remove(filepath.Join(arch, e.Name()))
		}
	}
	c.Start(t)
	conn = c.Conn(t)
	c.Exec(t, conn, "INSERT INTO t VALUES (2)")
	next := start.NextSegment(pg.DefaultSegmentSize)
	c.Exec(t, conn, "SELECT pg_switch_wal()")
	pgtest.WaitFor(t, 60*time.Second, "archiving of "+next.Name, func() (bool, error) {
		var got *string
		err := conn.QueryRow(ctx, "SELECT last_archived_wal FROM pg_stat_archiver").Scan(&got)
		return err == nil && got != nil && *got >= next.Name, err
	})
	a := walkSeg(t, start.Name, mustRead(t, filepath.Join(arch, start.Name)))
	b := walkSeg(t, next.Name, mustRead(t, filepath.Join(arch, next.Name)))
	if a.w.Tail == nil || a.w.Tail.TotLen < 20<<20 {
		t.Fatalf("%s: no unfinished 20 MiB record at its end (tail %s)", start.Name, fragString(a.w.Tail))
	}
	if !b.w.OverwriteAtStart || b.w.Head != nil || b.m.Flags&FlagOverwriteAtStart == 0 {
		t.Fatalf("%s: first page without XLP_FIRST_IS_OVERWRITE_CONTRECORD (head %s)", next.Name, fragString(b.w.Head))
	}
	var first *Record
	if _, err := Walk(b.data, b.name, pg.DefaultSegmentSize, func(r *Record) error {
		if first == nil {
			c := *r
			first = &c
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if first == nil || first.RmID != RmXLOG || first.Info&^xlrInfoMask != xlogOverwriteContRecord {
		t.Fatalf("%s: first record %+v, want XLOG_OVERWRITE_CONTRECORD", next.Name, first)
	}
	// pg_waldump reads the same records; the abandoned one is not among them
	// (the walker reported it unverified, as the segment's tail).
	out, _ := exec.Command(filepath.Join(pgtest.BinDir(), "pg_waldump"), "-p", arch, next.Name).CombinedOutput()
	if !strings.Contains(string(out), "OVERWRITE_CONTRECORD") {
		t.Fatalf("pg_waldump does not see the overwrite record:\n%s", pgtest.Tail(string(out), 2000))
	}
	da := runWaldump(t, arch, start.Name, next.Name, a.w.Start, a.w.End)
	db := runWaldump(t, arch, next.Name, "", b.w.Start, b.w.End)
	if da.records != a.records-1 || db.records != b.records {
		t.Fatalf("records: %s %d (walker %d with the abandoned one), %s %d (walker %d)", start.Name, da.records, a.records, next.Name, db.records, b.records)
	}
	m, err := Merge(a.m, b.m)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Unknown) != 0 || m.Tail != nil {
		t.Fatalf("merge: markers %+v, tail %s", m.Unknown, fragString(m.Tail))
	}
	if err := m.Covers(m.Start, m.End); err != nil {
		t.Fatal(err)
	}
	// Without the overwrite flag the same pair is a failed stitch.
	c2 := *b.m
	c2.Flags = 0
	m, _ = Merge(a.m, &c2)
	if len(m.Unknown) != 1 || m.Unknown[0].Reason != UnknownStitch || m.Unknown[0].Start != a.w.Tail.LSN {
		t.Fatalf("merge without the flag: %+v", m.Unknown)
	}
	t.Logf("record at %s (%d bytes) abandoned; %s starts with XLOG_OVERWRITE_CONTRECORD; pg_waldump agrees", a.w.Tail.LSN, a.w.Tail.TotLen, next.Name)
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

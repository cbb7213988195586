package restore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/fs"
)

// TestPlanBulkWAL: the plan follows the recovery timeline's history
// segment by segment, takes the segment holding a switch from the child,
// never a superseded parent segment, and stops at the end of the archive
// on that path, at the target's segment or at the budget.
func TestPlanBulkWAL(t *testing.T) {
	ctx := context.Background()
	b, err := fs.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r, err := func() (*repo.Repository, error) {
		if _, err := repo.Init(ctx, b, repo.InitOptions{CompressionLevel: 1, Now: time.Now()}); err != nil {
			return nil, err
		}
		return repo.Open(ctx, b, repo.OpenOptions{CompressionLevel: -1})
	}()
	if err != nil {
		t.Fatal(err)
	}
	// Timeline 1 has segments 3..9 (8 and 9 diverged: timeline 2 forked in
	// segment 7); timeline 2 has 7 and 8.
	for _, n := range []string{
		"000000010000000000000003", "000000010000000000000004", "000000010000000000000005",
		"000000010000000000000006", "000000010000000000000007", "000000010000000000000008",
		"000000010000000000000009", "000000020000000000000007", "000000020000000000000008",
	} {
		wf, _ := pg.ParseWALFileName(n)
		if err := b.Put(ctx, repo.WALObjectName(wf), strings.NewReader("x"), storage.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	m := &repo.Manifest{Summary: repo.Summary{ID: "b", StartWAL: "000000010000000000000003", SegmentSize: pg.DefaultSegmentSize}}
	hist := []pg.TimelineSwitch{{Parent: 1, Switch: 0x7000100}}
	names := func(p BulkWALPlan) string {
		var s []string
		for _, wf := range p.Segments {
			s = append(s, wf.Name[7:8]+"/"+wf.Name[23:])
		}
		return strings.Join(s, " ")
	}
	for _, c := range []struct {
		what     string
		tli      uint32
		hist     []pg.TimelineSwitch
		stop     pg.LSN
		max      int
		want     string
		complete bool
	}{
		{"timeline 2 latest", 2, hist, 0, 100, "1/3 1/4 1/5 1/6 2/7 2/8", true},
		{"timeline 1 (current)", 1, nil, 0, 100, "1/3 1/4 1/5 1/6 1/7 1/8 1/9", true},
		{"budget", 2, hist, 0, 3, "1/3 1/4 1/5", false},
		{"target LSN", 2, hist, 0x5000010, 100, "1/3 1/4 1/5", true},
		{"target in the switch segment", 2, hist, 0x7000200, 100, "1/3 1/4 1/5 1/6 2/7", true},
	} {
		p, err := PlanBulkWAL(ctx, r, m, c.tli, c.hist, c.stop, c.max)
		if err != nil {
			t.Fatalf("%s: %v", c.what, err)
		}
		if got := names(p); got != c.want || p.Complete != c.complete {
			t.Errorf("%s: plan %q complete %v, want %q complete %v", c.what, got, p.Complete, c.want, c.complete)
		}
	}
}

// TestBulkPlanFile: the plan handed to the background download reads back
// as written, and a plan naming anything but segments is refused (the
// process then downloads nothing rather than something wrong).
func TestBulkPlanFile(t *testing.T) {
	dir := t.TempDir()
	var plan BulkWALPlan
	plan.SegmentSize, plan.Complete, plan.Window = pg.DefaultSegmentSize, true, 64
	for _, n := range []string{"000000010000000000000003", "000000020000000000000004"} {
		wf, _ := pg.ParseWALFileName(n)
		plan.Segments = append(plan.Segments, wf)
	}
	if err := writeBulkPlan(dir, "/data", plan); err != nil {
		t.Fatal(err)
	}
	p, got, err := readBulkPlan(dir)
	if err != nil || p.PGData != "/data" || !got.Complete || got.Window != 64 || len(got.Segments) != 2 || got.Segments[1].Name != "000000020000000000000004" {
		t.Fatalf("read back %+v %+v %v", p, got, err)
	}
	os.WriteFile(filepath.Join(dir, bulkPlanFile), []byte(`{"segment_size":16777216,"segments":["00000002.history"]}`), 0o600)
	if _, _, err := readBulkPlan(dir); err == nil {
		t.Fatal("a plan naming a history file was accepted")
	}
}

// TestWatchRecovery: the background download stops once a signal file or
// postmaster.pid it saw is gone, and not while neither has appeared yet
// (PostgreSQL not started).
func TestWatchRecovery(t *testing.T) {
	for _, name := range []string{"recovery.signal", "postmaster.pid"} {
		pgdata := t.TempDir()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { watchRecovery(ctx, cancel, pgdata, nil); close(done) }()
		time.Sleep(600 * time.Millisecond)
		if ctx.Err() != nil {
			t.Fatalf("%s: stopped before the cluster started", name)
		}
		os.WriteFile(filepath.Join(pgdata, name), nil, 0o600)
		time.Sleep(600 * time.Millisecond)
		if ctx.Err() != nil {
			t.Fatalf("%s: stopped while it is there", name)
		}
		os.Remove(filepath.Join(pgdata, name))
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s gone: the watch did not stop the download", name)
		}
		if ctx.Err() == nil {
			t.Fatalf("%s gone: not cancelled", name)
		}
	}
}

// TestWaitInFlightDeadDownloader: a temporary file left by a downloader
// that no longer holds the directory's lock is not waited for; one whose
// downloader holds it is.
func TestWaitInFlightDeadDownloader(t *testing.T) {
	dir := t.TempDir()
	name := "000000010000000000000003"
	os.WriteFile(filepath.Join(dir, "."+name+".tmp"), []byte("part"), 0o600)
	start := time.Now()
	if waitInFlight(dir, name) {
		t.Fatal("waited for a leftover without a downloader")
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("took %s to give up on a leftover", d)
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(100 * time.Millisecond)
		os.Rename(filepath.Join(dir, "."+name+".tmp"), filepath.Join(dir, name+"."+strings.Repeat("0", 64)))
	}()
	if !waitInFlight(dir, name) {
		t.Fatal("did not wait for a live downloader's segment")
	}
}

// TestRunBulkPlanReplaced: a background download removes its own plan
// when it ends, and tells its plan from a later restore's in the same
// directory, so that it stops (and leaves that one alone) once replaced.
func TestRunBulkPlanReplaced(t *testing.T) {
	ctx := context.Background()
	b, err := fs.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Init(ctx, b, repo.InitOptions{CompressionLevel: 1, Now: time.Now()}); err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, b, repo.OpenOptions{CompressionLevel: -1})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var plan BulkWALPlan
	plan.SegmentSize = pg.DefaultSegmentSize
	for i := 3; i < 6; i++ {
		wf, _ := pg.ParseWALFileName(fmt.Sprintf("0000000100000000000000%02X", i))
		plan.Segments = append(plan.Segments, wf)
	}
	if err := writeBulkPlan(dir, "", plan); err != nil {
		t.Fatal(err)
	}
	// Nothing is archived: the download stops at its first segment.
	if err := RunBulkPlan(ctx, r, dir, BulkWALOptions{Concurrency: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, bulkPlanFile)); err == nil {
		t.Fatal("the plan of a download that ended was left")
	}
	if err := writeBulkPlan(dir, "", plan); err != nil {
		t.Fatal(err)
	}
	old, _, _ := readBulkPlan(dir)
	time.Sleep(time.Millisecond)
	if err := writeBulkPlan(dir, "", plan); err != nil {
		t.Fatal(err)
	}
	cur, _, _ := readBulkPlan(dir)
	if samePlan(dir, old.ID) || !samePlan(dir, cur.ID) {
		t.Fatalf("plans %q and %q not told apart", old.ID, cur.ID)
	}
}

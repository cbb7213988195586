package restore

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
)

// windowPlan is an in-memory repository with n small archived segments
// and a complete plan of them with the given window.
func windowPlan(t *testing.T, n, window int) (*repo.Repository, BulkWALPlan) {
	t.Helper()
	r, _ := newMemRepo(t)
	plan := BulkWALPlan{SegmentSize: pg.DefaultSegmentSize, Complete: true, Window: window}
	for i := 1; i <= n; i++ {
		wf, _ := pg.ParseWALFileName(fmt.Sprintf("0000000100000000000000%02X", i))
		if _, err := r.PutWAL(context.Background(), wf, bytes.NewReader(someBytes(uint64(i), 4096)), 4096); err != nil {
			t.Fatal(err)
		}
		plan.Segments = append(plan.Segments, wf)
	}
	return r, plan
}

// A plan with a window follows recovery: never more than the window's
// segments in the directory (ready or being written), each next one fetched
// as one is taken, all of them in the end, in order.
func TestBulkWALWindowFollowsRecovery(t *testing.T) {
	ctx := context.Background()
	r, plan := windowPlan(t, 12, 3)
	dir := t.TempDir()
	var most atomic.Int64
	count := func() int {
		entries, _ := os.ReadDir(dir)
		n := 0
		for _, e := range entries {
			if name := e.Name(); len(name) == 24+1+64 || len(name) == 1+24+4 { // ready or .<seg>.tmp
				n++
			}
		}
		return n
	}
	// Recovery: takes the segments in order, as they arrive.
	taken := make(chan []string)
	go func() {
		var got []string
		for _, wf := range plan.Segments {
			for {
				if n := int64(count()); n > most.Load() {
					most.Store(n)
				}
				if path, _, ok := prefetchedName(dir, wf.Name); ok {
					time.Sleep(5 * time.Millisecond) // replay
					os.Remove(path)
					got = append(got, wf.Name)
					break
				}
				time.Sleep(time.Millisecond)
			}
		}
		taken <- got
	}()
	res, err := BulkWAL(ctx, r, plan, BulkWALOptions{Dir: dir, Concurrency: 2, idle: 10 * time.Second})
	if err != nil || res.Stopped != "" || !res.Complete {
		t.Fatalf("%+v %v", res, err)
	}
	got := <-taken
	if len(got) != len(plan.Segments) {
		t.Fatalf("recovery took %d segments, want %d", len(got), len(plan.Segments))
	}
	if m := most.Load(); m > int64(plan.Window) {
		t.Fatalf("%d segments in the directory at once, window %d", m, plan.Window)
	}
}

// Nobody takes a segment (the cluster is not started): the download stops
// once its window is full and idle, quietly, with the window's segments in
// place for a later recovery and nothing beyond them.
func TestBulkWALWindowIdleStops(t *testing.T) {
	ctx := context.Background()
	r, plan := windowPlan(t, 5, 2)
	dir := t.TempDir()
	res, err := BulkWAL(ctx, r, plan, BulkWALOptions{Dir: dir, Concurrency: 2, idle: 100 * time.Millisecond})
	if err != nil || res.Complete || res.Segments != 2 || res.Stopped != plan.Segments[2].Name {
		t.Fatalf("%+v %v", res, err)
	}
	if n := readySegments(dir); n != 2 {
		t.Fatalf("%d segments left, want the window's 2", n)
	}
	for _, wf := range plan.Segments[:2] {
		if _, _, ok := prefetchedName(dir, wf.Name); !ok {
			t.Fatalf("%s missing", wf.Name)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, bulkMarker)); err != nil {
		t.Fatalf("bulk marker: %v", err)
	}
}

// planBulk: the restore's own (foreground) download is cut at the budget;
// the background one plans to the end of the archive with the budget as
// its window.
func TestPlanBulkFollow(t *testing.T) {
	ctx := context.Background()
	r, _ := newMemRepo(t)
	for i := 3; i <= 9; i++ {
		wf, _ := pg.ParseWALFileName(fmt.Sprintf("0000000100000000000000%02X", i))
		if _, err := r.PutWAL(ctx, wf, bytes.NewReader(someBytes(uint64(i), 64)), 64); err != nil {
			t.Fatal(err)
		}
	}
	m := &repo.Manifest{Summary: repo.Summary{ID: "b", StartWAL: "000000010000000000000003", SegmentSize: pg.DefaultSegmentSize}}
	o := BackupOptions{WALPrefetchBytes: 2 * pg.DefaultSegmentSize}
	log := slog.New(slog.DiscardHandler)
	cut, ok, err := planBulk(ctx, r, m, o, 1, nil, false, log)
	if err != nil || !ok || len(cut.Segments) != 2 || cut.Window != 0 || cut.Complete {
		t.Fatalf("foreground plan %d segments, window %d, complete %v (%v)", len(cut.Segments), cut.Window, cut.Complete, err)
	}
	follow, ok, err := planBulk(ctx, r, m, o, 1, nil, true, log)
	if err != nil || !ok || len(follow.Segments) != 7 || follow.Window != 2 || !follow.Complete {
		t.Fatalf("background plan %d segments, window %d, complete %v (%v)", len(follow.Segments), follow.Window, follow.Complete, err)
	}
	o.WALPrefetchBytes = 0
	if _, ok, _ := planBulk(ctx, r, m, o, 1, nil, true, log); ok {
		t.Fatal("a zero budget planned a download")
	}
}

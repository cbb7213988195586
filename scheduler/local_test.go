package scheduler

import (
	"context"
	"errors"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// claimRunner commits at most one result per scheduled time, like the
// repository's schedule claim, and counts the runs that started.
type claimRunner struct {
	mu      sync.Mutex
	started map[int64]int
	done    map[int64]bool
}

func (c *claimRunner) Run(ctx context.Context, _ Job, t time.Time) (Result, error) {
	c.mu.Lock()
	c.started[t.Unix()]++
	c.mu.Unlock()
	select {
	case <-ctx.Done():
		return Result{}, ctx.Err()
	case <-time.After(300 * time.Millisecond):
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done[t.Unix()] {
		return Result{}, ErrAlreadyDone
	}
	c.done[t.Unix()] = true
	return Result{BackupID: "b" + t.Format("150405")}, nil
}

func (c *claimRunner) Find(_ context.Context, _ Job, t time.Time) (Result, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done[t.Unix()] {
		return Result{BackupID: "b" + t.Format("150405")}, true, nil
	}
	return Result{}, false, nil
}

// TestLocalExactlyOnce runs two Local schedulers on one directory: every
// scheduled time runs once, and both see its final record.
func TestLocalExactlyOnce(t *testing.T) {
	dir := t.TempDir()
	r := &claimRunner{started: map[int64]int{}, done: map[int64]bool{}}
	ctx, cancel := context.WithTimeout(context.Background(), 4500*time.Millisecond)
	defer cancel()
	var wg sync.WaitGroup
	for _, name := range []string{"a", "b"} {
		l, err := NewLocal(LocalOptions{Dir: dir, Member: name, Runner: r, PollInterval: 50 * time.Millisecond,
			Jobs:    []Job{{Name: "j", Kind: "backup", Schedule: "* * * * * *"}},
			Metrics: NewStandaloneMetrics(prometheus.NewRegistry())})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); l.Run(ctx) }()
	}
	wg.Wait()
	f, err := readLocalRecords(recordsPath(dir, "j"))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.started) < 3 {
		t.Fatalf("only %d scheduled times ran", len(r.started))
	}
	for ts, n := range r.started {
		if n != 1 {
			t.Errorf("scheduled time %d started %d times", ts, n)
		}
	}
	seen := map[int64]bool{}
	for _, run := range f.Runs {
		if seen[run.Scheduled.Unix()] {
			t.Errorf("two final records for %s", run.Scheduled)
		}
		seen[run.Scheduled.Unix()] = true
		if run.Status != StatusSucceeded || run.Adopted {
			t.Errorf("record %+v", run)
		}
	}
	latest, err := LocalLatestRuns(dir)
	if err != nil || len(latest) != 1 || latest[0].Job != "j" {
		t.Fatalf("LocalLatestRuns: %v %+v", err, latest)
	}
}

// flakyRunner fails the first run of every scheduled time.
type flakyRunner struct {
	mu   sync.Mutex
	runs map[int64]int
}

func (f *flakyRunner) Run(_ context.Context, _ Job, t time.Time) (Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.runs[t.Unix()]++
	if f.runs[t.Unix()] == 1 {
		return Result{}, errors.New("first attempt fails")
	}
	return Result{BackupID: "ok"}, nil
}

func (f *flakyRunner) Find(context.Context, Job, time.Time) (Result, bool, error) {
	return Result{}, false, nil
}

// TestLocalRetryAndLockedTime: a failed attempt is retried after
// RetryDelay and recorded as attempt 2; a scheduled time whose lock
// another holder keeps is not started, and is given up when its window ends.
func TestLocalRetryAndLockedTime(t *testing.T) {
	dir := t.TempDir()
	f := &flakyRunner{runs: map[int64]int{}}
	l, err := NewLocal(LocalOptions{Dir: dir, Member: "a", Runner: f, PollInterval: 50 * time.Millisecond, RetryDelay: 300 * time.Millisecond,
		Jobs: []Job{{Name: "j", Kind: "backup", Schedule: "@every 1h"}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ts := time.Now().Truncate(time.Second)
	l.tick(ctx, l.jobs[0], ts, ts.Add(5*time.Second))
	recs, err := l.readRecords("j")
	if err != nil || len(recs.Runs) != 1 || recs.Runs[0].Attempt != 2 || recs.Runs[0].Status != StatusSucceeded || len(recs.Attempts) != 0 {
		t.Fatalf("records after a retry: %v %+v", err, recs)
	}
	// Another holder of the next time's lock: this daemon never starts it.
	next := ts.Add(time.Second)
	unlock, ok, err := tryFlock(filepath.Join(dir, "locks", "j."+strconv.FormatInt(next.Unix(), 10)+".lock"))
	if err != nil || !ok {
		t.Fatalf("lock: %v %v", ok, err)
	}
	defer unlock()
	l.tick(ctx, l.jobs[0], next, time.Now().Add(500*time.Millisecond))
	if f.runs[next.Unix()] != 0 {
		t.Fatalf("a locked scheduled time was run %d times", f.runs[next.Unix()])
	}
}

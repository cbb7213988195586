package scheduler

import (
	"context"
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

package daemon

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/scheduler"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/fs"
)

// fsRepo initializes an unencrypted repository in a temp directory and
// returns an opener for it, as cmd/pgkeep passes one.
func fsRepo(t *testing.T) func(context.Context, func(storage.Backend) storage.Backend) (*repo.Repository, error) {
	t.Helper()
	dir := t.TempDir()
	b, err := fs.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Init(context.Background(), b, repo.InitOptions{Now: time.Now()}); err != nil {
		t.Fatal(err)
	}
	return func(ctx context.Context, wrap func(storage.Backend) storage.Backend) (*repo.Repository, error) {
		b, err := fs.New(dir)
		if err != nil {
			return nil, err
		}
		return repo.Open(ctx, wrap(b), repo.OpenOptions{CompressionLevel: -1})
	}
}

// A standalone daemon in-process, without PostgreSQL: a retention job
// (nothing to delete) succeeds and a verify job (no backup to verify)
// fails, every second. The job metrics, the repository metrics from the
// first refresh, the storage requests through the wrapper, build info,
// and the failure's timestamp are all on the registry; and Run stops
// when its context ends.
func TestRunStandalone(t *testing.T) {
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	o := Options{
		Member:  "solo",
		LockDir: filepath.Join(t.TempDir(), "lock"),
		Jobs: []Job{
			{Job: scheduler.Job{Name: "trim", Kind: scheduler.JobRetention, Schedule: "* * * * * *"}, JobSettings: JobSettings{RetainFull: 2}},
			{Job: scheduler.Job{Name: "check", Kind: scheduler.JobVerify, Schedule: "* * * * * *"}},
		},
		PollInterval: 100 * time.Millisecond, Retries: 1,
		OpenRepository: fsRepo(t),
		Build:          BuildInfo{Version: "test", Revision: "r1"},
		Registry:       reg,
		Logger:         slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	go func() { done <- Run(ctx, o) }()
	var text string
	for i := 0; i < 100; i++ {
		time.Sleep(100 * time.Millisecond)
		text = exposition(t, reg)
		// The success is counted (observe) just before it is recorded.
		if strings.Contains(text, scheduler.MetricLastSuccess+`{job_name="trim"}`) &&
			strings.Contains(text, scheduler.MetricLastFailure+`{job_name="check"}`) &&
			strings.Contains(text, MetricRepoBackups+" 0") {
			break
		}
	}
	has(t, text,
		MetricRepoBackups+" 0",
		MetricRepoWALGaps+" 0",
		MetricRepoInfoRefreshErrors+" 0",
		`pgkeep_build_info{goversion="`+runtime.Version()+`",revision="r1",version="test"} 1`)
	for _, want := range []string{
		scheduler.MetricRuns + `{job_name="trim",result="succeeded"} `,
		scheduler.MetricRuns + `{job_name="check",result="failed"} `,
		scheduler.MetricLastFailure + `{job_name="check"} `,
		scheduler.MetricLastSuccess + `{job_name="trim"} `,
		MetricRepoSize + " ",
		MetricRepoInfoRefreshed + " ",
		MetricStorageRequests + `{op="list"} `,
	} {
		if !strings.Contains(text, "\n"+want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(text, MetricStorageRequests+`{op="list"} 0`+"\n") {
		t.Error("no storage LIST counted after a refresh and a retention run")
	}
	// Unknown is absent: no backup, no window, no PostgreSQL probe, no
	// backup running.
	hasNo(t, text, MetricRepoNewestBackup, MetricRepoRecoveryWindowStart, MetricRepoNewestWAL, MetricPostgresUp, MetricRunningBackupDone)

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

// A job of a kind the table does not have is a configuration error.
func TestRunUnknownKind(t *testing.T) {
	err := Run(context.Background(), Options{
		Jobs:           []Job{{Job: scheduler.Job{Name: "x", Kind: "vacuum", Schedule: "@daily"}}},
		OpenRepository: fsRepo(t),
	})
	var ce *ConfigError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), `"vacuum" is not backup, retention, verify or drill`) {
		t.Errorf("Run with kind vacuum: %v", err)
	}
}

// The progress of this daemon's own backup is live, and gone when it ends.
func TestRunningBackupProgress(t *testing.T) {
	open := fsRepo(t)
	r, err := open(context.Background(), func(b storage.Backend) storage.Backend { return b })
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	c := newRepoInfo(r, time.Hour, slog.New(slog.DiscardHandler))
	reg.MustRegister(c)
	p := c.progress()
	p.Start(100)
	p.Add(40)
	has(t, exposition(t, reg), MetricRunningBackupDone+" 40", MetricRunningBackupTotal+" 100")
	p.Finish()
	hasNo(t, exposition(t, reg), MetricRunningBackupDone, MetricRunningBackupTotal)
}

package daemon

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/pgkeep/pgkeep/scheduler"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/fs"
)

// exposition is what /metrics would serve from reg.
func exposition(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

func has(t *testing.T, text string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(text, w+"\n") {
			t.Errorf("metrics lack %q:\n%s", w, text)
		}
	}
}

func hasNo(t *testing.T, text string, names ...string) {
	t.Helper()
	for _, n := range names {
		for _, line := range strings.Split(text, "\n") {
			if strings.HasPrefix(line, n+" ") || strings.HasPrefix(line, n+"{") {
				t.Errorf("metrics have %q, want it absent", line)
			}
		}
	}
}

// pg_stat_archiver facts become timestamps and counters; what is not
// known is absent, never -1.
func TestArchiverMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newMetrics(reg, BuildInfo{Version: "1.2.3", Revision: "abc"})
	text := exposition(t, reg)
	has(t, text, `pgkeep_build_info{goversion="`+runtime.Version()+`",revision="abc",version="1.2.3"} 1`)
	hasNo(t, text, MetricPostgresUp, MetricArchiveLastArchived, MetricArchiveFailed) // not asked yet

	archived := time.Unix(1700000000, 500_000_000)
	failed := time.Unix(1700000100, 0)
	m.archiver.set(Archiver{ArchiveMode: "on", ArchivedCount: 7, LastArchivedTime: &archived, FailedCount: 3, LastFailedTime: &failed}, nil)
	has(t, exposition(t, reg),
		MetricPostgresUp+" 1",
		MetricArchiveLastArchived+" 1.7000000005e+09",
		MetricArchiveLastFailed+" 1.7000001e+09",
		MetricArchiveArchived+" 7",
		MetricArchiveFailed+" 3")

	// A standby that does not archive: no last-archived time (its own
	// archiver's is stale), the counters still there.
	m.archiver.set(Archiver{InRecovery: true, ArchiveMode: "on", LastArchivedTime: &archived}, nil)
	text = exposition(t, reg)
	hasNo(t, text, MetricArchiveLastArchived, MetricArchiveLastFailed)
	has(t, text, MetricArchiveFailed+" 0")
	m.archiver.set(Archiver{InRecovery: true, ArchiveMode: "always", LastArchivedTime: &archived}, nil)
	has(t, exposition(t, reg), MetricArchiveLastArchived+" 1.7000000005e+09")

	// PostgreSQL down: up 0 and nothing else.
	m.archiver.set(Archiver{}, errors.New("connection refused"))
	text = exposition(t, reg)
	has(t, text, MetricPostgresUp+" 0")
	hasNo(t, text, MetricArchiveLastArchived, MetricArchiveFailed, MetricArchiveArchived, MetricArchiveLastFailed)
}

// The storage wrapper counts each request by op, and errors only for
// real failures; the conditional-put probe stays visible through it.
func TestStorageCounters(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newMetrics(reg, BuildInfo{})
	fsb, err := fs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := m.storage.wrap(fsb)
	ctx := context.Background()
	if err := b.Put(ctx, "a/x", strings.NewReader("x"), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, "a/x", strings.NewReader("y"), storage.PutOptions{IfAbsent: true}); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("second create-if-absent: %v", err)
	}
	if rc, err := b.Get(ctx, "a/x"); err != nil {
		t.Fatal(err)
	} else {
		rc.Close()
	}
	if _, err := b.Get(ctx, "a/missing"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatal(err)
	}
	if rc, err := b.GetRange(ctx, "a/x", 0, 1); err != nil {
		t.Fatal(err)
	} else {
		rc.Close()
	}
	if _, err := b.Stat(ctx, "a/x"); err != nil {
		t.Fatal(err)
	}
	stop := errors.New("enough")
	if err := b.List(ctx, "a/", func(storage.ObjectInfo) error { return stop }); !errors.Is(err, stop) {
		t.Fatal(err)
	}
	if err := b.Delete(ctx, "a/x"); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	b.List(cctx, "a/", func(storage.ObjectInfo) error { return nil })
	has(t, exposition(t, reg),
		MetricStorageRequests+`{op="put"} 2`,
		MetricStorageRequests+`{op="get"} 3`,
		MetricStorageRequests+`{op="stat"} 1`,
		MetricStorageRequests+`{op="list"} 2`,
		MetricStorageRequests+`{op="delete"} 1`,
		MetricStorageErrors+`{op="put"} 0`,
		MetricStorageErrors+`{op="get"} 0`,
		MetricStorageErrors+`{op="list"} 0`)
	if _, ok := any(fsb).(storage.ConditionalPutProber); ok {
		if _, ok := b.(storage.ConditionalPutProber); !ok {
			t.Error("the wrapper hides the backend's ConditionalPutProber")
		}
	}
}

// Job kinds come from one table: config load refuses an unknown one with
// the list, and each kind's own settings are checked.
func TestJobKinds(t *testing.T) {
	for _, k := range []string{"backup", "retention", "verify", "drill"} {
		if got, err := ParseJobKind(k); err != nil || string(got) != k {
			t.Errorf("ParseJobKind(%q) = %q, %v", k, got, err)
		}
	}
	if _, err := ParseJobKind("vacuum"); err == nil || err.Error() != `"vacuum" is not backup, retention, verify or drill` {
		t.Errorf("ParseJobKind(vacuum): %v", err)
	}
	if err := CheckJob(scheduler.JobRetention, JobSettings{}); err == nil {
		t.Error("retention without retain_full or retain_days accepted")
	}
	if err := CheckJob(scheduler.JobRetention, JobSettings{RetainFull: 2, RetainDays: 3}); err == nil {
		t.Error("retention with both accepted")
	}
	if err := CheckJob(scheduler.JobRetention, JobSettings{RetainDays: 3}); err != nil {
		t.Error(err)
	}
	if err := CheckJob(scheduler.JobBackup, JobSettings{RetainFull: 1}); err == nil {
		t.Error("backup with retain_full accepted")
	}
	for _, k := range kinds {
		if k.run == nil || k.check == nil {
			t.Errorf("kind %s: no run or check", k.name)
		}
	}
}

package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/s3test"
	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/fs"
	"github.com/pgkeep/pgkeep/storage/s3"
)

// countingBackend counts the requests made through it.
type countingBackend struct {
	storage.Backend
	lists, gets, ranges, stats, puts atomic.Int64
	mu                               sync.Mutex
	got                              []string
}

func (c *countingBackend) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	c.lists.Add(1)
	return c.Backend.List(ctx, prefix, fn)
}

func (c *countingBackend) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	c.gets.Add(1)
	c.mu.Lock()
	c.got = append(c.got, name)
	c.mu.Unlock()
	return c.Backend.Get(ctx, name)
}

func (c *countingBackend) GetRange(ctx context.Context, name string, off, n int64) (io.ReadCloser, error) {
	c.ranges.Add(1)
	return c.Backend.GetRange(ctx, name, off, n)
}

func (c *countingBackend) Stat(ctx context.Context, name string) (storage.ObjectInfo, error) {
	c.stats.Add(1)
	return c.Backend.Stat(ctx, name)
}

func (c *countingBackend) Put(ctx context.Context, name string, r io.Reader, o storage.PutOptions) error {
	c.puts.Add(1)
	return c.Backend.Put(ctx, name, r, o)
}

func (c *countingBackend) reset() {
	c.lists.Store(0)
	c.gets.Store(0)
	c.ranges.Store(0)
	c.stats.Store(0)
	c.puts.Store(0)
	c.got = nil
}

// infoFixture describes the repository buildInfoRepo writes: timeline 1
// holds segments 1..switchSeg-1 but for a gap, timeline 2 (forked inside
// segment switchSeg) the segments from switchSeg to lastSeg; backups are
// spread over both, the oldest kept, the second annotated, and one more
// backup is running.
type infoFixture struct {
	segments, backups int
	switchSeg         uint64
	gapFrom, gapTo    uint64 // missing on timeline 1
	lastSeg           uint64 // newest segment of timeline 2
	ids               []string
	starts            []uint64 // start segment of each backup
	tlis              []uint32
	switchLSN         pg.LSN
}

func fixtureSegName(tli uint32, n uint64) string {
	return pg.SegmentName(tli, uint32(n/256), uint32(n%256))
}

// buildInfoRepo writes the fixture's objects straight through b (fake WAL
// content: info never reads a segment).
func buildInfoRepo(t testing.TB, b storage.Backend, segments, backups int) (*Repository, infoFixture) {
	t.Helper()
	ctx := context.Background()
	if _, err := Init(ctx, b, InitOptions{CompressionLevel: 1}); err != nil {
		t.Fatal(err)
	}
	r, err := Open(ctx, b, OpenOptions{CompressionLevel: -1})
	if err != nil {
		t.Fatal(err)
	}
	f := infoFixture{segments: segments, backups: backups}
	tl1 := segments * 6 / 10
	f.switchSeg = uint64(tl1)
	f.gapFrom, f.gapTo = f.switchSeg/2, f.switchSeg/2+4
	f.lastSeg = f.switchSeg + uint64(segments-tl1+6) - 1 // timeline 2 makes up for the gap and segment 0
	f.switchLSN = pg.LSN(f.switchSeg*segSize + 0x100)
	hist := fmt.Sprintf("1\t%s\tno recovery target specified\n", f.switchLSN)
	if err := r.PutObject(ctx, "wal/history/00000002.history", []byte(hist), storage.PutOptions{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	var names []string
	for n := uint64(1); n < f.switchSeg; n++ {
		if n >= f.gapFrom && n <= f.gapTo {
			continue
		}
		names = append(names, fixtureSegName(1, n))
	}
	for n := f.switchSeg; n <= f.lastSeg; n++ {
		names = append(names, fixtureSegName(2, n))
	}
	if len(names) != segments {
		t.Fatalf("fixture has %d segments, want %d", len(names), segments)
	}
	put := func(name string, data []byte) {
		if err := b.Put(ctx, name, bytes.NewReader(data), storage.PutOptions{}); err != nil {
			t.Error(err)
		}
	}
	work := make(chan string)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range work {
				put("wal/"+n[:16]+"/"+n, []byte("segment "+n))
			}
		}()
	}
	for _, n := range names {
		work <- n
	}
	close(work)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range backups {
		// Half on each timeline, each starting 20 segments after the last
		// on timeline 1 (from segment 10) and on timeline 2 (from the switch).
		tli, start := uint32(1), uint64(10+20*i)
		if i >= backups/2 {
			tli, start = 2, f.switchSeg+10+uint64(20*(i-backups/2))
		}
		at := base.Add(time.Duration(i) * time.Hour)
		id := NewBackupID(at, fmt.Sprintf("%04x", i))
		s := Summary{Format: 1, ID: id, StartTime: at, StopTime: at.Add(time.Minute),
			StartLSN: pg.LSN(start*segSize + 0x28).String(), StopLSN: pg.LSN((start+1)*segSize + 0x100).String(),
			Timeline: tli, StartWAL: fixtureSegName(tli, start), StopWAL: fixtureSegName(tli, start+1),
			SegmentSize: segSize, DataSize: 1000, StoredSize: 400, Host: "db1", Role: "primary"}
		if i == 1 {
			s.Annotations = map[string]string{"ticket": "OPS-1"}
		}
		data, _ := json.Marshal(s)
		put(PackName(id, 0), []byte("pack"))
		put(summaryName(id), data)
		f.ids, f.starts, f.tlis = append(f.ids, id), append(f.starts, start), append(f.tlis, tli)
	}
	if err := r.KeepBackup(ctx, f.ids[0], nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	// A running backup with progress, and an abandoned one.
	put(startedName("20990101T000000Z-run1"), []byte(`{"start_lsn":"0/1000028","wal_segment_size":16777216}`))
	alive, _ := json.Marshal(AliveRecord{Host: "db2", PID: 42, Time: time.Now().UTC(), Started: time.Now().UTC().Add(-10 * time.Second), BytesDone: 500 << 20, BytesTotal: 2000 << 20})
	put(aliveName("20990101T000000Z-run1"), alive)
	put(startedName("20000101T000000Z-dead"), []byte(`{}`))
	return r, f
}

func TestInfo(t *testing.T) {
	ctx := context.Background()
	fsb, err := fs.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cb := &countingBackend{Backend: fsb}
	r, f := buildInfoRepo(t, cb, 300, 6)
	cb.reset()
	inf, err := r.Info(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(inf.Timelines) != 2 {
		t.Fatalf("timelines %+v", inf.Timelines)
	}
	t1, t2 := inf.Timelines[0], inf.Timelines[1]
	if t1.FirstWAL != fixtureSegName(1, 1) || t1.LastWAL != fixtureSegName(1, f.switchSeg-1) || t1.Segments != int(f.switchSeg-1-5) {
		t.Errorf("timeline 1: %+v", t1)
	}
	if t1.GapCount != 1 || len(t1.Gaps) != 1 || t1.Gaps[0] != (WALGap{From: fixtureSegName(1, f.gapFrom), To: fixtureSegName(1, f.gapTo), Segments: 5}) {
		t.Errorf("timeline 1 gaps: %+v", t1.Gaps)
	}
	if t2.Parent != 1 || t2.Begin != f.switchLSN.String() || t2.FirstWAL != fixtureSegName(2, f.switchSeg) || t2.LastWAL != fixtureSegName(2, f.lastSeg) || t2.GapCount != 0 {
		t.Errorf("timeline 2: %+v", t2)
	}
	w := inf.RecoveryWindow
	if w == nil {
		t.Fatal("no recovery window")
	}
	oldest := inf.Backups[0]
	if w.Timeline != 2 || w.FirstBackup != f.ids[0] || w.FirstLSN != oldest.StopLSN || !w.FirstTime.Equal(oldest.StopTime) {
		t.Errorf("window start: %+v", w)
	}
	if w.LastBackup != f.ids[len(f.ids)-1] || w.LastWAL != fixtureSegName(2, f.lastSeg) || w.LastLSN != pg.LSN((f.lastSeg+1)*segSize).String() {
		t.Errorf("window end: %+v", w)
	}
	if !strings.Contains(w.String(), w.FirstLSN) || !strings.Contains(w.String(), w.LastLSN) {
		t.Errorf("window line %q", w.String())
	}
	if len(inf.Backups) != 6 || !inf.Backups[0].Kept || inf.Backups[1].Kept || inf.Backups[1].Annotations["ticket"] != "OPS-1" {
		t.Errorf("backups: %+v", inf.Backups)
	}
	for _, b := range inf.Backups {
		if !b.OnRecoveryPath {
			t.Errorf("backup %s (timeline %d) is on timeline 2's history", b.ID, b.Timeline)
		}
	}
	if len(inf.Running) != 1 || inf.Running[0].ID != "20990101T000000Z-run1" || inf.Running[0].BytesDone != 500<<20 ||
		inf.Running[0].BytesTotal != 2000<<20 || inf.Running[0].Rate < 40e6 || inf.Running[0].Rate > 60e6 || inf.Running[0].Host != "db2" {
		t.Errorf("running: %+v", inf.Running)
	}
	if len(inf.Incomplete) != 1 || inf.Incomplete[0] != "20000101T000000Z-dead" {
		t.Errorf("incomplete: %v", inf.Incomplete)
	}
	if inf.Size.WAL <= 0 || inf.Size.Backups <= 0 || inf.Size.Total < inf.Size.WAL+inf.Size.Backups {
		t.Errorf("size %+v", inf.Size)
	}
	// One LIST of wal/ and one of backups/; GETs of the summaries, the
	// history file, the keep flag and the heartbeat only.
	if n := cb.lists.Load(); n != 2 {
		t.Errorf("%d LIST calls, want 2", n)
	}
	if n := cb.gets.Load(); n != int64(6+1+1+1) {
		t.Errorf("%d GET calls, want 9: %v", n, cb.got)
	}
	for _, name := range cb.got {
		if strings.HasPrefix(name, "wal/") && !strings.HasPrefix(name, "wal/history/") {
			t.Errorf("info read segment %s", name)
		}
	}
	if n := cb.ranges.Load() + cb.stats.Load() + cb.puts.Load(); n != 0 {
		t.Errorf("%d ranged GET, HEAD or PUT calls, want none", n)
	}
}

// TestInfoWindowStopsAtGap: the window ends at the last segment archived
// without a gap after the newest backup, and a backup whose own WAL is
// missing does not open it.
func TestInfoWindowStopsAtGap(t *testing.T) {
	ctx := context.Background()
	r := testRepo(t) // segments 1..40 on timeline 1
	commitFakeStop(t, r, "20260101T000000Z-aaaa", 3)
	commitFakeStop(t, r, "20260102T000000Z-bbbb", 10)
	if err := r.backend.Delete(ctx, "wal/0000000100000000/"+segName(4)); err != nil {
		t.Fatal(err)
	}
	if err := r.backend.Delete(ctx, "wal/0000000100000000/"+segName(30)); err != nil {
		t.Fatal(err)
	}
	inf, err := r.Info(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	w := inf.RecoveryWindow
	if w == nil || w.FirstBackup != "20260102T000000Z-bbbb" || w.LastWAL != segName(29) || w.LastLSN != pg.LSN(30*segSize).String() {
		t.Fatalf("window %+v", w)
	}
	if inf.Timelines[0].GapCount != 2 {
		t.Errorf("gaps %+v", inf.Timelines[0].Gaps)
	}
}

func commitFakeStop(t *testing.T, r *Repository, id string, startSeg int) {
	t.Helper()
	at := time.Now().Add(-time.Hour)
	m := &Manifest{Summary: Summary{ID: id, StartTime: at, StopTime: at.Add(time.Minute),
		StartLSN: pg.LSN(uint64(startSeg)*segSize + 0x28).String(), StopLSN: pg.LSN(uint64(startSeg+1)*segSize + 0x100).String(),
		StartWAL: segName(startSeg), StopWAL: segName(startSeg + 1), SegmentSize: segSize, Timeline: 1}}
	if err := r.CommitBackup(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

// TestInfoScale measures info on 10,000 segments and 50 backups, on the
// filesystem and (with MinIO) on S3, and bounds its requests.
func TestInfoScale(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 10,000 objects")
	}
	run := func(t *testing.T, b storage.Backend, limit time.Duration) {
		cb := &countingBackend{Backend: b}
		r, _ := buildInfoRepo(t, cb, 10000, 50)
		cb.reset()
		start := time.Now()
		inf, err := r.Info(context.Background(), time.Now())
		took := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("info on %d segments, %d backups: %s, %d LIST, %d GET, %d HEAD, %d ranged GET",
			10000, len(inf.Backups), took.Round(time.Millisecond), cb.lists.Load(), cb.gets.Load(), cb.stats.Load(), cb.ranges.Load())
		if cb.lists.Load() != 2 || cb.gets.Load() != 50+3 || cb.stats.Load()+cb.ranges.Load() != 0 {
			t.Errorf("requests: %d LIST, %d GET, %d HEAD, %d ranged", cb.lists.Load(), cb.gets.Load(), cb.stats.Load(), cb.ranges.Load())
		}
		if inf.RecoveryWindow == nil || inf.Timelines[1].Segments+inf.Timelines[0].Segments != 10000 {
			t.Errorf("info: %+v", inf.Timelines)
		}
		if took > limit {
			t.Errorf("info took %s, want under %s", took, limit)
		}
	}
	t.Run("fs", func(t *testing.T) {
		b, err := fs.Create(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		run(t, b, 2*time.Second)
	})
	t.Run("s3", func(t *testing.T) {
		if _, err := s3test.Binary(); err != nil || os.Getenv("PGKEEP_TEST_MINIO") == "" {
			t.Skip("set PGKEEP_TEST_MINIO to a MinIO binary")
		}
		srv := s3test.Start(t)
		srv.CreateBucket(t, "info")
		run(t, srv.Backend(t, "info", "repo", s3.Options{}), 10*time.Second)
	})
}

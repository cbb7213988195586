package archive

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/mem"
	"github.com/pgkeep/pgkeep/walmap"
	"github.com/pgkeep/pgkeep/walmap/walmaptest"
)

const (
	testSegSize = 1 << 20
	testSysid   = 7714298854777892457
)

// failMaps refuses every map object, as a store that breaks between the
// segment and its map would.
type failMaps struct{ storage.Backend }

func (f failMaps) Put(ctx context.Context, name string, r io.Reader, o storage.PutOptions) error {
	if strings.HasSuffix(name, ".map") {
		return errors.New("injected: map write failed")
	}
	return f.Backend.Put(ctx, name, r, o)
}

func memRepo(t *testing.T, b storage.Backend) *repo.Repository {
	t.Helper()
	ctx := context.Background()
	if _, err := repo.Init(ctx, b, repo.InitOptions{CompressionLevel: 1, Now: time.Now()}); err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, b, repo.OpenOptions{CompressionLevel: -1})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// walDir writes segments 1..n into a pg_wal with archive_status/.ready
// files, as PostgreSQL leaves them.
func walDir(t *testing.T, n int) (string, []string, [][]byte) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pg_wal")
	os.MkdirAll(filepath.Join(dir, "archive_status"), 0o700)
	names, segs := walmaptest.Segments(testSysid, 1, testSegSize, 1, n)
	for i, name := range names {
		if err := os.WriteFile(filepath.Join(dir, name), segs[i], 0o600); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "archive_status", name+".ready"), nil, 0o600)
	}
	return dir, names, segs
}

func push(t *testing.T, r *repo.Repository, dir, name string, o PushOptions) {
	t.Helper()
	o.Path = filepath.Join(dir, name)
	if err := PushWAL(context.Background(), r, o); err != nil {
		t.Fatalf("push %s: %v", name, err)
	}
}

func checkMap(t *testing.T, r *repo.Repository, name string, seg []byte) {
	t.Helper()
	wf, _ := pg.ParseWALFileName(name)
	m, err := r.FetchWALMap(context.Background(), wf)
	if err != nil {
		t.Fatalf("map of %s: %v", name, err)
	}
	if err := walmap.Verify(seg, name, m); err != nil {
		t.Fatal(err)
	}
	if m.SegmentSHA256 == ([32]byte{}) {
		t.Fatalf("map of %s carries no segment hash", name)
	}
}

func TestPushStoresBlockMap(t *testing.T) {
	ctx := context.Background()
	b := mem.New()
	r := memRepo(t, b)
	dir, names, segs := walDir(t, 4)
	// The first push pushes the others ahead: they get maps too.
	push(t, r, dir, names[0], PushOptions{PushAhead: 8})
	for i, name := range names {
		checkMap(t, r, name, segs[i])
	}
	// An identical segment already archived whose map is missing (a push
	// killed between the two) gets its map on the next push.
	wf, _ := pg.ParseWALFileName(names[2])
	if err := b.Delete(ctx, repo.WALMapObjectName(wf)); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(dir, "pgkeep"))
	push(t, r, dir, names[2], PushOptions{})
	checkMap(t, r, names[2], segs[2])

	// A .partial gets one as well.
	partial := names[3] + ".partial"
	os.WriteFile(filepath.Join(dir, partial), segs[3], 0o600)
	push(t, r, dir, partial, PushOptions{})
	pf, _ := pg.ParseWALFileName(partial)
	if ok, err := r.HasWALMap(ctx, pf); err != nil || !ok {
		t.Fatalf("map of %s: %v %v", partial, ok, err)
	}
}

func TestPushMapFailureIsOnlyAWarning(t *testing.T) {
	ctx := context.Background()
	r := memRepo(t, failMaps{mem.New()})
	dir, names, segs := walDir(t, 1)
	var logBuf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logBuf, nil))
	push(t, r, dir, names[0], PushOptions{Logger: log})
	wf, _ := pg.ParseWALFileName(names[0])
	obj, err := r.FetchWAL(ctx, wf)
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if _, err := obj.Decode(&got); err != nil || !bytes.Equal(got.Bytes(), segs[0]) {
		t.Fatalf("segment not archived intact: %v", err)
	}
	obj.Close()
	if ok, _ := r.HasWALMap(ctx, wf); ok {
		t.Fatal("map stored through a failing store")
	}
	if !strings.Contains(logBuf.String(), "block map not stored") || !strings.Contains(logBuf.String(), "injected") {
		t.Fatalf("no warning: %q", logBuf.String())
	}

	// A segment the walker cannot read (not WAL past its page header) is
	// archived all the same; its map says so rather than fail.
	r2 := memRepo(t, mem.New())
	bad := append([]byte(nil), segs[0]...)
	for i := 100; i < len(bad); i++ {
		bad[i] = 0xA5
	}
	os.WriteFile(filepath.Join(dir, names[0]), bad, 0o600)
	push(t, r2, dir, names[0], PushOptions{})
	m, err := r2.FetchWALMap(ctx, wf)
	if err != nil || len(m.Unknown) == 0 {
		t.Fatalf("map of an unreadable segment: %v %+v", err, m)
	}
}

func TestPushWithoutBlockMaps(t *testing.T) {
	ctx := context.Background()
	r := memRepo(t, mem.New())
	dir, names, _ := walDir(t, 2)
	push(t, r, dir, names[0], PushOptions{PushAhead: 8, NoBlockMaps: true})
	for _, name := range names {
		wf, _ := pg.ParseWALFileName(name)
		if ok, err := r.HasWAL(ctx, wf); err != nil || !ok {
			t.Fatalf("%s not archived: %v", name, err)
		}
		if ok, _ := r.HasWALMap(ctx, wf); ok {
			t.Fatalf("%s has a map with block maps off", name)
		}
	}
}

// BenchmarkPush is one wal-push of a 16 MiB segment to storage/mem, with
// the block map (the default) and without: the map's cost on the push.
func BenchmarkPush(b *testing.B) {
	names, segs := walmaptest.Segments(testSysid, 1, 16<<20, 1, 1)
	dir := b.TempDir()
	p := filepath.Join(dir, names[0])
	os.WriteFile(p, segs[0], 0o600)
	for _, tc := range []struct {
		name  string
		noMap bool
	}{{"maps", false}, {"nomaps", true}} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(16 << 20)
			for b.Loop() {
				b.StopTimer()
				r := memRepo(&testing.T{}, mem.New())
				b.StartTimer()
				if err := PushWAL(context.Background(), r, PushOptions{Path: p, NoBlockMaps: tc.noMap}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPushMapCost interleaves pushes with and without the block map
// (so a loaded machine's drift hits both alike) and reports each one's
// median and their ratio.
func BenchmarkPushMapCost(b *testing.B) {
	names, segs := walmaptest.Segments(testSysid, 1, 16<<20, 1, 1)
	p := filepath.Join(b.TempDir(), names[0])
	os.WriteFile(p, segs[0], 0o600)
	var with, without []time.Duration
	one := func(noMap bool) time.Duration {
		r := memRepo(&testing.T{}, mem.New())
		start := time.Now()
		if err := PushWAL(context.Background(), r, PushOptions{Path: p, NoBlockMaps: noMap}); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	i := 0
	for b.Loop() {
		if i%2 == 0 {
			with = append(with, one(false))
			without = append(without, one(true))
		} else {
			without = append(without, one(true))
			with = append(with, one(false))
		}
		i++
	}
	median := func(d []time.Duration) float64 {
		d = append([]time.Duration(nil), d...)
		slices.Sort(d)
		return float64(d[len(d)/2])
	}
	b.ReportMetric(median(with)/1e6, "ms-maps")
	b.ReportMetric(median(without)/1e6, "ms-nomaps")
	b.ReportMetric(median(with)/median(without), "ratio")
}

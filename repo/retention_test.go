package repo

import (
	"context"
	"fmt"
	fs2 "io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/fs"
)

const segSize = 16 << 20

func segName(n int) string { return fmt.Sprintf("00000001%08X%08X", n/256, n%256) }

// repoDirs remembers each test repository's directory, for tests that
// age objects by hand.
var repoDirs = map[*Repository]string{}

// ageBackup sets the modification time of every object of backup id back
// by d, as if nothing had written to it for that long.
func ageBackup(t *testing.T, r *Repository, id string, d time.Duration) {
	t.Helper()
	root := filepath.Join(repoDirs[r], "backups", id)
	err := filepath.WalkDir(root, func(p string, e fs2.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		old := time.Now().Add(-d)
		return os.Chtimes(p, old, old)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func testRepo(t *testing.T) *Repository {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	b, err := fs.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Init(ctx, b, InitOptions{CompressionLevel: 1}); err != nil {
		t.Fatal(err)
	}
	r, err := Open(ctx, b, OpenOptions{CompressionLevel: -1})
	if err != nil {
		t.Fatal(err)
	}
	repoDirs[r] = dir
	for n := 1; n <= 40; n++ {
		wf, _ := pg.ParseWALFileName(segName(n))
		if err := r.PutObject(ctx, WALObjectName(wf), []byte("wal"), storage.PutOptions{IfAbsent: true}); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func commitFake(t *testing.T, r *Repository, id string, startSeg int, at time.Time) {
	t.Helper()
	m := &Manifest{Summary: Summary{ID: id, StartTime: at, StopTime: at.Add(time.Minute),
		StartLSN: pg.LSN(uint64(startSeg) * segSize).String(), StartWAL: segName(startSeg), StopWAL: segName(startSeg + 1), SegmentSize: segSize, Timeline: 1}}
	if err := r.CommitBackup(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

func keptFrom(t *testing.T, plan RetentionPlan) int {
	t.Helper()
	deleted := map[string]bool{}
	for _, w := range plan.WAL {
		deleted[w[len(w)-24:]] = true
	}
	first := 0
	for n := 1; n <= 40; n++ {
		if !deleted[segName(n)] {
			if first == 0 {
				first = n
			}
		} else if first != 0 {
			t.Fatalf("segment %d deleted after kept segment %d: a gap", n, first)
		}
	}
	return first
}

// A backup that started before a newer one committed, and is still running
// when delete runs, keeps its WAL: it may commit after the delete.
func TestRetentionKeepsRunningBackupsWAL(t *testing.T) {
	ctx := context.Background()
	r := testRepo(t)
	now := time.Now().UTC()
	commitFake(t, r, "20260101T000000Z-0001", 5, now.Add(-3*time.Hour))
	// Running: started at segment 10, has written a pack, no summary yet.
	running := "20260101T010000Z-0002"
	if err := r.MarkBackupStarted(ctx, running, StartRecord{StartLSN: pg.LSN(10 * segSize).String(), SegmentSize: segSize, Time: now}); err != nil {
		t.Fatal(err)
	}
	if err := r.PutObject(ctx, PackName(running, 0), []byte("pack"), storage.PutOptions{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	commitFake(t, r, "20260101T020000Z-0003", 20, now.Add(-time.Hour))

	plan, err := r.PlanRetention(ctx, RetentionOptions{RetainFull: 1, DebrisMinAge: time.Hour, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if got := keptFrom(t, plan); got != 10 {
		t.Fatalf("WAL kept from segment %d, want 10 (the running backup's start); plan %+v", got, plan)
	}
	if !slices.Equal(plan.Backups, []string{"20260101T000000Z-0001"}) || len(plan.Debris) != 0 {
		t.Fatalf("plan: %+v", plan)
	}
	if plan.OldestKeptWAL != segName(10) {
		t.Fatalf("oldest kept %s", plan.OldestKeptWAL)
	}

	// --debris-min-age 0 does not make a running backup debris: its
	// objects are younger than RunningGrace.
	plan, err = r.PlanRetention(ctx, RetentionOptions{RetainFull: 1, DebrisMinAge: 0, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Debris) != 0 || keptFrom(t, plan) != 10 {
		t.Fatalf("a backup written to just now was taken for debris: %+v", plan)
	}

	// Once it is old enough to be debris, it is removed and anchors nothing.
	ageBackup(t, r, running, RunningGrace+time.Second)
	plan, err = r.PlanRetention(ctx, RetentionOptions{RetainFull: 1, DebrisMinAge: 0, Now: now.Add(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if got := keptFrom(t, plan); got != 20 {
		t.Fatalf("WAL kept from segment %d, want 20", got)
	}
	if !slices.Equal(plan.Debris, []string{running}) {
		t.Fatalf("debris: %v", plan.Debris)
	}
	if err := r.ApplyRetention(ctx, plan); err != nil {
		t.Fatal(err)
	}
	backups, debris, err := r.ListBackups(ctx)
	if err != nil || len(backups) != 1 || backups[0].ID != "20260101T020000Z-0003" || len(debris) != 0 {
		t.Fatalf("after apply: %+v %v %v", backups, debris, err)
	}
}

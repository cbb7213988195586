package repo

import (
	"context"
	"errors"
	"testing"
	"time"
)

// Two backups for one scheduled time: the first to commit claims it, the
// second fails with ErrScheduleTaken and stays invisible; FindScheduled
// names the first, completes a claimed backup whose backup.json is
// missing, and deleting the backup frees the time.
func TestScheduleClaim(t *testing.T) {
	ctx := context.Background()
	r := testRepo(t)
	at := time.Date(2026, 11, 27, 1, 0, 0, 0, time.UTC)
	s := Schedule{Job: "nightly", Time: at}
	mk := func(id string) *Manifest {
		sc := s
		return &Manifest{Summary: Summary{ID: id, StartTime: at, StopTime: at.Add(time.Minute),
			StartWAL: segName(3), StopWAL: segName(4), SegmentSize: segSize, Timeline: 1, Schedule: &sc}}
	}
	if _, found, err := r.FindScheduled(ctx, s); err != nil || found {
		t.Fatalf("before any backup: found=%v err=%v", found, err)
	}
	if err := r.CommitBackup(ctx, mk("20261127T010000Z-aaaa")); err != nil {
		t.Fatal(err)
	}
	err := r.CommitBackup(ctx, mk("20261127T010001Z-bbbb"))
	if !errors.Is(err, ErrScheduleTaken) {
		t.Fatalf("second backup for %s: %v, want ErrScheduleTaken", s, err)
	}
	bs, _, err := r.ListBackups(ctx)
	if err != nil || len(bs) != 1 || bs[0].ID != "20261127T010000Z-aaaa" || bs[0].Schedule == nil || !bs[0].Schedule.Time.Equal(at) {
		t.Fatalf("backups %+v err %v, want only the first, annotated", bs, err)
	}
	// A crash between the claim and backup.json: FindScheduled completes it.
	if err := r.backend.Delete(ctx, summaryName("20261127T010000Z-aaaa")); err != nil {
		t.Fatal(err)
	}
	got, found, err := r.FindScheduled(ctx, s)
	if err != nil || !found || got.ID != "20261127T010000Z-aaaa" {
		t.Fatalf("find: %+v %v %v", got, found, err)
	}
	if _, err := r.ReadSummary(ctx, got.ID); err != nil {
		t.Fatalf("claimed backup not completed: %v", err)
	}
	if err := r.DeleteBackup(ctx, got.ID); err != nil {
		t.Fatal(err)
	}
	if _, found, err := r.FindScheduled(ctx, s); err != nil || found {
		t.Fatalf("after delete: found=%v err=%v", found, err)
	}
}

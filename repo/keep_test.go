package repo

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/pg"
)

func walExists(t *testing.T, r *Repository, n int) bool {
	t.Helper()
	wf, _ := pg.ParseWALFileName(segName(n))
	_, err := r.backend.Stat(context.Background(), WALObjectName(wf))
	return err == nil
}

// TestKeptBackupSurvivesRetention: a kept backup and the WAL from its
// start survive --retain-full 1; once its keep ends (or it is unkept) it
// goes like any other.
func TestKeptBackupSurvivesRetention(t *testing.T) {
	ctx := context.Background()
	r := testRepo(t)
	now := time.Now()
	commitFakeStop(t, r, "20260101T000000Z-aaaa", 5)
	commitFakeStop(t, r, "20260102T000000Z-bbbb", 10)
	commitFakeStop(t, r, "20260103T000000Z-cccc", 20)
	if err := r.KeepBackup(ctx, "20260101T000000Z-aaaa", nil, now); err != nil {
		t.Fatal(err)
	}
	if err := r.KeepBackup(ctx, "20260101T000000Z-nope", nil, now); !errors.Is(err, ErrBackupNotFound) {
		t.Errorf("keep of a missing backup: %v", err)
	}
	past := now.Add(-time.Hour)
	if err := r.KeepBackup(ctx, "20260102T000000Z-bbbb", &past, now); err == nil {
		t.Error("keep --until in the past accepted")
	}
	plan, err := r.PlanRetention(ctx, RetentionOptions{RetainFull: 1, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(plan.Backups, []string{"20260102T000000Z-bbbb"}) || !slices.Equal(plan.Kept, []string{"20260101T000000Z-aaaa"}) {
		t.Fatalf("plan: backups %v, kept %v", plan.Backups, plan.Kept)
	}
	if len(plan.WAL) != 4 || plan.OldestKeptWAL != segName(5) || plan.WALBytes <= 0 || plan.BackupBytes <= 0 {
		t.Fatalf("plan: WAL %v (%d bytes), oldest kept %s, backup bytes %d", plan.WAL, plan.WALBytes, plan.OldestKeptWAL, plan.BackupBytes)
	}
	if err := r.ApplyRetention(ctx, plan); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadSummary(ctx, "20260101T000000Z-aaaa"); err != nil {
		t.Errorf("kept backup: %v", err)
	}
	if walExists(t, r, 4) || !walExists(t, r, 5) || !walExists(t, r, 19) {
		t.Error("retention did not keep exactly the WAL from the kept backup's start")
	}
	kept, err := r.KeptBackups(ctx)
	if err != nil || len(kept) != 1 || kept["20260101T000000Z-aaaa"].Until != nil {
		t.Fatalf("kept backups %v, %v", kept, err)
	}

	// A keep with an end: active before it, not after.
	until := now.Add(time.Hour)
	if err := r.KeepBackup(ctx, "20260101T000000Z-aaaa", &until, now); err != nil {
		t.Fatal(err)
	}
	plan, err = r.PlanRetention(ctx, RetentionOptions{RetainFull: 1, Now: now.Add(30 * time.Minute)})
	if err != nil || len(plan.Backups) != 0 {
		t.Fatalf("before --until: %v, %v", plan.Backups, err)
	}
	plan, err = r.PlanRetention(ctx, RetentionOptions{RetainFull: 1, Now: now.Add(2 * time.Hour)})
	if err != nil || !slices.Equal(plan.Backups, []string{"20260101T000000Z-aaaa"}) {
		t.Fatalf("after --until: %v, %v", plan.Backups, err)
	}

	// Unkept: retention takes it.
	if err := r.UnkeepBackup(ctx, "20260101T000000Z-aaaa"); err != nil {
		t.Fatal(err)
	}
	plan, err = r.PlanRetention(ctx, RetentionOptions{RetainFull: 1, Now: now})
	if err != nil || !slices.Equal(plan.Backups, []string{"20260101T000000Z-aaaa"}) || plan.OldestKeptWAL != segName(20) {
		t.Fatalf("after unkeep: %v (oldest kept %s), %v", plan.Backups, plan.OldestKeptWAL, err)
	}
}

// TestPlanDeleteBackup: deleting one backup removes it and only the WAL no
// remaining backup needs; a kept backup is refused.
func TestPlanDeleteBackup(t *testing.T) {
	ctx := context.Background()
	r := testRepo(t)
	now := time.Now()
	commitFakeStop(t, r, "20260101T000000Z-aaaa", 5)
	commitFakeStop(t, r, "20260102T000000Z-bbbb", 10)
	commitFakeStop(t, r, "20260103T000000Z-cccc", 20)

	plan, err := r.PlanDeleteBackup(ctx, "20260102T000000Z-bbbb", now)
	if err != nil || !slices.Equal(plan.Backups, []string{"20260102T000000Z-bbbb"}) || len(plan.WAL) != 4 || plan.OldestKeptWAL != segName(5) {
		t.Fatalf("delete the middle one: %+v, %v", plan, err)
	}
	plan, err = r.PlanDeleteBackup(ctx, "20260101T000000Z-aaaa", now)
	if err != nil || !slices.Equal(plan.Backups, []string{"20260101T000000Z-aaaa"}) || plan.OldestKeptWAL != segName(10) || len(plan.WAL) != 9 {
		t.Fatalf("delete the oldest: %+v, %v", plan, err)
	}
	if err := r.ApplyRetention(ctx, plan); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadSummary(ctx, "20260101T000000Z-aaaa"); !errors.Is(err, ErrBackupNotFound) {
		t.Errorf("deleted backup still there: %v", err)
	}
	if walExists(t, r, 9) || !walExists(t, r, 10) {
		t.Error("WAL below the oldest remaining backup not removed, or more removed")
	}

	if err := r.KeepBackup(ctx, "20260103T000000Z-cccc", nil, now); err != nil {
		t.Fatal(err)
	}
	if _, err := r.PlanDeleteBackup(ctx, "20260103T000000Z-cccc", now); err == nil || !strings.Contains(err.Error(), "unkeep") {
		t.Errorf("delete of a kept backup: %v", err)
	}
	if _, err := r.PlanDeleteBackup(ctx, "20260109T000000Z-none", now); !errors.Is(err, ErrBackupNotFound) {
		t.Errorf("delete of a missing backup: %v", err)
	}
	// The kept one is the oldest remaining: WAL below its start goes.
	plan, err = r.PlanDeleteBackup(ctx, "20260102T000000Z-bbbb", now)
	if err != nil || len(plan.WAL) != 10 || plan.OldestKeptWAL != segName(20) {
		t.Fatalf("%+v, %v", plan, err)
	}
	if err := r.ApplyRetention(ctx, plan); err != nil {
		t.Fatal(err)
	}
	if err := r.UnkeepBackup(ctx, "20260103T000000Z-cccc"); err != nil {
		t.Fatal(err)
	}
	plan, err = r.PlanDeleteBackup(ctx, "20260103T000000Z-cccc", now)
	if err != nil || len(plan.WAL) != 0 || len(plan.Backups) != 1 {
		t.Fatalf("delete of the only backup: %+v, %v", plan, err)
	}
}

func TestAnnotations(t *testing.T) {
	a, err := ParseAnnotations([]string{"ticket=OPS-1", "reason=before migration v2", "empty="})
	if err != nil || a["ticket"] != "OPS-1" || a["reason"] != "before migration v2" || len(a) != 3 {
		t.Fatalf("%v, %v", a, err)
	}
	for _, bad := range [][]string{
		{"noequals"}, {"=v"}, {"1key=v"}, {"k/x=v"}, {"k=v", "k=w"}, {"k=" + strings.Repeat("x", 257)},
		{"k=line\nbreak"}, {"k=\x1b[31m"}, {strings.Repeat("k", 64) + "=v"},
	} {
		if _, err := ParseAnnotations(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	var many []string
	for i := range MaxAnnotations + 1 {
		many = append(many, "k"+string(rune('a'+i))+"=v")
	}
	if _, err := ParseAnnotations(many); err == nil {
		t.Error("too many annotations accepted")
	}

	ctx := context.Background()
	r := testRepo(t)
	m := &Manifest{Summary: Summary{ID: "20260101T000000Z-aaaa", StartLSN: "0/5000028", StopLSN: "0/6000100",
		StartWAL: segName(5), StopWAL: segName(6), SegmentSize: segSize, Timeline: 1, Annotations: a}}
	if err := r.CommitBackup(ctx, m); err != nil {
		t.Fatal(err)
	}
	s, err := r.ReadSummary(ctx, m.ID)
	if err != nil || s.Annotations["reason"] != "before migration v2" {
		t.Fatalf("%+v, %v", s.Annotations, err)
	}
	m2 := &Manifest{Summary: Summary{ID: "20260102T000000Z-bbbb", StartLSN: "0/5000028", StopLSN: "0/6000100",
		StartWAL: segName(5), StopWAL: segName(6), SegmentSize: segSize, Timeline: 1, Annotations: map[string]string{"bad key": "v"}}}
	if err := r.CommitBackup(ctx, m2); err == nil {
		t.Error("commit with a bad annotation key accepted")
	}
}

// TestHeartbeatProgress: the heartbeat carries the progress SetProgress
// reports, and Info shows it for the running backup.
func TestHeartbeatProgress(t *testing.T) {
	ctx := context.Background()
	r := testRepo(t)
	id := "20260105T000000Z-runn"
	h, err := r.StartHeartbeat(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Stop()
	h.SetProgress(func() (int64, int64) { return 300, 1200 })
	if err := h.beat(ctx); err != nil {
		t.Fatal(err)
	}
	rec, err := r.readAlive(ctx, id)
	if err != nil || rec.BytesDone != 300 || rec.BytesTotal != 1200 || rec.Started.IsZero() || rec.PID == 0 {
		t.Fatalf("alive %+v, %v", rec, err)
	}
	inf, err := r.Info(ctx, time.Now())
	if err != nil || len(inf.Running) != 1 || inf.Running[0].ID != id || inf.Running[0].BytesDone != 300 || inf.Running[0].BytesTotal != 1200 {
		t.Fatalf("info running %+v, %v", inf.Running, err)
	}
	// A heartbeat older than RunningGrace is debris, not a running backup.
	inf, err = r.Info(ctx, time.Now().Add(RunningGrace+time.Second))
	if err != nil || len(inf.Running) != 0 || len(inf.Incomplete) != 1 {
		t.Fatalf("stale heartbeat: running %+v, incomplete %v, %v", inf.Running, inf.Incomplete, err)
	}
}

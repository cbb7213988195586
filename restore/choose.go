package restore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
)

// restorePlan is what a restore found out before writing anything: the
// backup, the timeline recovery follows and its history, and the clusters
// running on this host (whose directories it must not touch).
type restorePlan struct {
	m       *repo.Manifest
	tli     uint32
	history []pg.TimelineSwitch
	running []pg.RunningCluster
}

// planRestore chooses the backup and checks, before anything is written,
// that the restore can succeed: the target directories are free, the
// backup is on the recovery timeline's history and its WAL is archived.
func planRestore(ctx context.Context, r *repo.Repository, o BackupOptions, log *slog.Logger) (restorePlan, error) {
	var p restorePlan
	if o.PGData == "" || !filepath.IsAbs(o.PGData) {
		return p, fmt.Errorf("--pgdata must be an absolute path (got %q)", o.PGData)
	}
	p.running = pg.RunningClusters()
	if err := checkTargetDir(o.PGData, o.Delta || o.Force, p.running); err != nil {
		return p, err
	}
	backups, _, err := r.ListBackups(ctx)
	if err != nil {
		return p, err
	}
	backups, tli, history, err := onRecoveryPath(ctx, r, backups, o, log)
	if err != nil {
		return p, err
	}
	sum, err := ChooseBackup(backups, o.BackupID, o.Target)
	if errors.Is(err, ErrBeforeWindow) {
		if inf, ierr := r.Info(ctx, time.Now()); ierr == nil && inf.RecoveryWindow != nil {
			err = fmt.Errorf("%w; the recovery window is %s", err, inf.RecoveryWindow)
		}
	}
	if err != nil {
		return p, err
	}
	m, err := r.ReadManifest(ctx, sum.ID)
	if err != nil {
		return p, err
	}
	if tli == 0 { // recovery_target_timeline = current: the backup's own
		tli = sum.Timeline
		if history, err = r.TimelineHistory(ctx, tli); err != nil {
			return p, fmt.Errorf("timeline %d: %w", tli, err)
		}
	}
	if err := checkTablespaceLocations(m, o.TablespaceMap, p.running); err != nil {
		return p, err
	}
	if err := checkBackupWAL(ctx, r, m); err != nil {
		return p, err
	}
	warnTargetPastArchive(ctx, r, o.Target, log)
	p.m, p.tli, p.history = m, tli, history
	return p, nil
}

// onRecoveryPath keeps the backups recovery can start from when it follows
// the timeline it will follow: one on an abandoned timeline (after a
// cluster rollback) would make PostgreSQL refuse to start ("requested
// timeline is not a child of this server's history").
//
// It also returns the timeline recovery follows and its history (0 and nil
// for recovery_target_timeline = current: the chosen backup's).
func onRecoveryPath(ctx context.Context, r *repo.Repository, backups []repo.Summary, o BackupOptions, log *slog.Logger) ([]repo.Summary, uint32, []pg.TimelineSwitch, error) {
	tli := o.Timeline
	switch tl := o.Target.Timeline; {
	case tli != 0:
	case tl.Kind == TimelineCurrent:
		return backups, 0, nil, nil
	case tl.Kind == TimelineLatest:
		newest, err := r.NewestTimeline(ctx)
		if err != nil {
			return nil, 0, nil, err
		}
		tli = newest
		for _, b := range backups {
			tli = max(tli, b.Timeline) // its history file may not be archived
		}
	default:
		tli = tl.ID
	}
	history, err := r.TimelineHistory(ctx, tli)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("timeline %d: %w", tli, err)
	}
	var out []repo.Summary
	for _, b := range backups {
		if repo.OnTimelinePath(b, tli, history) {
			out = append(out, b)
		} else if b.ID == o.BackupID {
			return nil, 0, nil, fmt.Errorf("backup %s (timeline %d, consistent at %s) is not on the history of timeline %d that recovery follows; choose another backup or --target-timeline", b.ID, b.Timeline, b.StopLSN, tli)
		}
	}
	if len(out) < len(backups) {
		log.Info("skipping backups not on the recovery timeline's history", "timeline", tli, "skipped", len(backups)-len(out))
	}
	if len(out) == 0 && len(backups) > 0 {
		return nil, 0, nil, fmt.Errorf("none of the %d backups is on the history of timeline %d that recovery follows (the newest is on timeline %d)", len(backups), tli, backups[len(backups)-1].Timeline)
	}
	return out, tli, history, nil
}

// warnTargetPastArchive warns when a target time lies after the moment
// the newest archived segment reached the repository: PostgreSQL will run
// out of WAL before reaching it, and refuses to promote there.
func warnTargetPastArchive(ctx context.Context, r *repo.Repository, t Target, log *slog.Logger) {
	if t.Kind != TargetTime || t.Time.IsZero() {
		return
	}
	seg, at, ok, err := r.NewestWAL(ctx)
	if err != nil || !ok {
		return
	}
	if t.Time.After(at) {
		log.Warn("the target time is after the newest archived WAL reached the repository; recovery will likely end before the target and PostgreSQL will stop with 'recovery ended before configured recovery target was reached'",
			"target_time", t.Time.UTC(), "newest_segment", seg.Name, "archived_at", at.UTC())
	}
}

// checkBackupWAL makes sure the WAL that makes the backup consistent is
// archived before anything is written: without it the restore is useless.
func checkBackupWAL(ctx context.Context, r *repo.Repository, m *repo.Manifest) error {
	first, err := pg.ParseWALFileName(m.StartWAL)
	if err != nil {
		return fmt.Errorf("backup %s: %w", m.ID, err)
	}
	last, err := pg.ParseWALFileName(m.StopWAL)
	if err != nil {
		return fmt.Errorf("backup %s: %w", m.ID, err)
	}
	for seg := first; seg.SegNo(m.SegmentSize) <= last.SegNo(m.SegmentSize); seg = seg.NextSegment(m.SegmentSize) {
		ok, err := r.HasWAL(ctx, seg)
		if err != nil {
			return fmt.Errorf("check WAL segment %s: %w", seg.Name, err)
		}
		if !ok {
			return fmt.Errorf("WAL segment %s, needed to make backup %s consistent, is missing from the archive", seg.Name, m.ID)
		}
	}
	return nil
}

// ErrLocationInUse means a directory restore would write to belongs to a
// running cluster (its data directory or one of its tablespaces).
var ErrLocationInUse = errors.New("is in use by a running cluster; refusing to write there whatever the flags")

// checkTargetDir refuses a live postmaster and a directory a running
// cluster writes to always, and a non-empty directory unless allowed.
func checkTargetDir(dir string, allowNonEmpty bool, running []pg.RunningCluster) error {
	if pid := pg.PostmasterPID(dir); pid > 0 {
		return fmt.Errorf("%s: %w (pid %d)", dir, ErrPostmasterRunning, pid)
	}
	if c, used, ok := pg.UsedBy(dir, running); ok {
		return fmt.Errorf("%s overlaps %s, which %w (postmaster pid %d, data directory %s)", dir, used, ErrLocationInUse, c.PID, c.DataDir)
	}
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(entries) > 0 && !allowNonEmpty {
		return fmt.Errorf("%s is not empty; use --delta to reuse matching files or --force to overwrite it", dir)
	}
	return nil
}

// checkTablespaceLocations checks, before anything is written, every
// directory the backup's tablespaces would be restored to.
func checkTablespaceLocations(m *repo.Manifest, remap map[string]string, running []pg.RunningCluster) error {
	for _, t := range m.Tablespaces {
		loc := t.Location
		if v, ok := remap[t.OID]; ok {
			loc = v
		}
		if err := checkTablespaceLocation(t.OID, loc, running); err != nil {
			return err
		}
	}
	return nil
}

func checkTablespaceLocation(oid, loc string, running []pg.RunningCluster) error {
	if !filepath.IsAbs(loc) {
		return fmt.Errorf("tablespace %s: location %q is not absolute", oid, loc)
	}
	if c, used, ok := pg.UsedBy(loc, running); ok {
		return fmt.Errorf("tablespace %s: location %s overlaps %s, which %w (postmaster pid %d, data directory %s); restore it elsewhere with --tablespace-map %s=DIR",
			oid, loc, used, ErrLocationInUse, c.PID, c.DataDir, oid)
	}
	return nil
}

// ErrBeforeWindow means the recovery target lies before the end of the
// oldest backup: no restore can reach it.
var ErrBeforeWindow = errors.New("the recovery target is before the recovery window")

// ChooseBackup picks the backup to restore: id if given, else the newest
// one that ended before the target (time or LSN), else the newest.
func ChooseBackup(backups []repo.Summary, id string, t Target) (repo.Summary, error) {
	if id != "" && id != "latest" {
		for _, b := range backups {
			if b.ID == id {
				return b, nil
			}
		}
		return repo.Summary{}, fmt.Errorf("backup %s: %w", id, repo.ErrBackupNotFound)
	}
	if len(backups) == 0 {
		return repo.Summary{}, errors.New("the repository holds no backup")
	}
	for i := len(backups) - 1; i >= 0; i-- {
		b := backups[i]
		switch t.Kind {
		case TargetTime:
			if !b.StopTime.After(t.Time) {
				return b, nil
			}
		case TargetLSN:
			if stop, err := pg.ParseLSN(b.StopLSN); err == nil && stop <= t.LSN {
				return b, nil
			}
		default:
			return b, nil
		}
	}
	return repo.Summary{}, fmt.Errorf("%w: no backup ended before it; the oldest backup (%s) is consistent at %s, LSN %s",
		ErrBeforeWindow, backups[0].ID, backups[0].StopTime.UTC().Format(time.RFC3339Nano), backups[0].StopLSN)
}

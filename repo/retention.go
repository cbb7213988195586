package repo

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/storage"
)

// RetentionOptions says which backups to keep.
type RetentionOptions struct {
	// RetainFull keeps the newest N backups.
	RetainFull int
	// RetainDays keeps every backup that ended within D days, plus the
	// newest older one, so any moment of the window stays restorable.
	RetainDays int
	// DebrisMinAge protects uncommitted backups that may still be running:
	// only debris whose heartbeat (or, without one, newest object) is older
	// than this, and never younger than RunningGrace, is removed.
	DebrisMinAge time.Duration
	Now          time.Time
}

// Bounds of retention settings: beyond them a typo, not a policy.
const (
	MaxRetainFull = 100000
	MaxRetainDays = 100 * 366
)

// Validate bounds what a user can ask for.
func (o RetentionOptions) Validate() error {
	switch {
	case o.RetainFull < 0 || o.RetainFull > MaxRetainFull:
		return fmt.Errorf("--retain-full %d: give 1 to %d backups", o.RetainFull, MaxRetainFull)
	case o.RetainDays < 0 || o.RetainDays > MaxRetainDays:
		return fmt.Errorf("--retain-days %d: give 1 to %d days", o.RetainDays, MaxRetainDays)
	case o.DebrisMinAge < 0:
		return fmt.Errorf("--debris-min-age %s: must not be negative", o.DebrisMinAge)
	}
	return nil
}

// RetentionPlan is exactly what ApplyRetention deletes.
type RetentionPlan struct {
	Backups []string // backup IDs
	Debris  []string // IDs of uncommitted (failed) backups
	WAL     []string // WAL object names
	// OldestKeptWAL is the first segment every retained backup still needs.
	OldestKeptWAL string
	// Bytes stored in what the plan removes.
	BackupBytes, DebrisBytes, WALBytes int64
	// Kept are the backups that retention would have removed but that are
	// marked kept (backup keep).
	Kept []string
}

// PlanRetention computes what retention removes. WAL older than the start
// of the oldest retained backup goes; history files always stay (they are
// tiny and recovery across timelines needs them). Backups marked kept
// (KeepBackup, until their keep ends) are retained whatever the options
// say, and so is the WAL from their start on.
//
// Safe while wal-push and backups run: both only add objects, a running
// backup's WAL is newer than any retained backup's start, and uncommitted
// backups younger than DebrisMinAge are left alone.
func (r *Repository) PlanRetention(ctx context.Context, o RetentionOptions) (RetentionPlan, error) {
	var plan RetentionPlan
	if (o.RetainFull > 0) == (o.RetainDays > 0) {
		return plan, errors.New("give exactly one of --retain-full N or --retain-days D")
	}
	if err := o.Validate(); err != nil {
		return plan, err
	}
	l, err := r.listBackupObjects(ctx)
	if err != nil {
		return plan, err
	}
	backups, err := r.readSummaries(ctx, l.committed)
	if err != nil {
		return plan, err
	}
	keep := map[string]bool{}
	if o.RetainFull > 0 {
		for i := max(0, len(backups)-o.RetainFull); i < len(backups); i++ {
			keep[backups[i].ID] = true
		}
	} else {
		cutoff := o.Now.AddDate(0, 0, -o.RetainDays)
		for i := len(backups) - 1; i >= 0; i-- {
			keep[backups[i].ID] = true
			if backups[i].StopTime.Before(cutoff) {
				break // the newest backup older than the window covers its start
			}
		}
	}
	kept, err := r.readKeeps(ctx, l)
	if err != nil {
		return plan, err
	}
	for _, b := range backups {
		if k, ok := kept[b.ID]; ok && k.Active(o.Now) && !keep[b.ID] {
			keep[b.ID] = true
			plan.Kept = append(plan.Kept, b.ID)
		}
	}
	return r.planFrom(ctx, plan, backups, keep, l, o.DebrisMinAge, true)
}

// PlanDeleteBackup computes what deleting the one committed backup id
// removes: the backup and the WAL no remaining backup needs (older than
// the oldest remaining backup's start, and than any running backup's). A
// kept backup is refused.
func (r *Repository) PlanDeleteBackup(ctx context.Context, id string, now time.Time) (RetentionPlan, error) {
	var plan RetentionPlan
	if err := ValidBackupID(id); err != nil {
		return plan, err
	}
	l, err := r.listBackupObjects(ctx)
	if err != nil {
		return plan, err
	}
	if i := sort.SearchStrings(l.committed, id); i == len(l.committed) || l.committed[i] != id {
		return plan, fmt.Errorf("%s: %w", id, ErrBackupNotFound)
	}
	if l.keep[id] {
		k, ok, err := r.readKeep(ctx, id)
		if err != nil {
			return plan, err
		}
		if ok && k.Active(now) {
			until := "until unkept"
			if k.Until != nil {
				until = "until " + k.Until.Format(time.RFC3339)
			}
			return plan, fmt.Errorf("backup %s is kept (%s); run `pgkeep backup unkeep %s` first", id, until, id)
		}
	}
	backups, err := r.readSummaries(ctx, l.committed)
	if err != nil {
		return plan, err
	}
	keep := map[string]bool{}
	for _, b := range backups {
		keep[b.ID] = b.ID != id
	}
	return r.planFrom(ctx, plan, backups, keep, l, 0, false)
}

// planFrom completes plan: the backups not in keep go, WAL below the
// oldest kept one's start (and any running backup's) goes, and with
// withDebris so does debris whose heartbeat is older than debrisMinAge.
func (r *Repository) planFrom(ctx context.Context, plan RetentionPlan, backups []Summary, keep map[string]bool, l backupListing, debrisMinAge time.Duration, withDebris bool) (RetentionPlan, error) {
	var oldest *Summary
	for i := range backups {
		if keep[backups[i].ID] {
			if oldest == nil {
				oldest = &backups[i]
			}
		} else {
			plan.Backups = append(plan.Backups, backups[i].ID)
			plan.BackupBytes += l.size[backups[i].ID]
		}
	}
	// Uncommitted backups young enough to be still running keep the WAL
	// from their start: one may commit after this delete, and it must find
	// all its WAL (a backup that began before a newer one committed starts
	// earlier than every retained backup).
	var running []StartRecord
	var now time.Time
	var err error
	if len(l.debris) > 0 {
		if now, err = r.storeNow(ctx); err != nil {
			return plan, err
		}
	}
	minAge := max(debrisMinAge, RunningGrace)
	var inUse map[string]bool // packs other backups reference, once needed
	for _, id := range l.debris {
		if l.retired[id] {
			// A deleted backup's packs kept for others: only the ones no
			// one references any more go (DeleteBackup keeps the rest).
			if !withDebris {
				continue
			}
			if inUse == nil {
				if inUse, err = r.referencedPacks(ctx, ""); err != nil {
					return plan, err
				}
			}
			var free int64
			err := r.backend.List(ctx, BackupPrefix(id), func(o storage.ObjectInfo) error {
				if !inUse[o.Name] && !isFreshRepackTarget(o, now) {
					free += o.Size
				}
				return nil
			})
			if err != nil {
				return plan, fmt.Errorf("backup %s: %w", id, err)
			}
			if free > 0 {
				plan.Debris = append(plan.Debris, id)
				plan.DebrisBytes += free
			}
			continue
		}
		last, err := r.lastSign(ctx, id)
		if err != nil {
			return plan, fmt.Errorf("backup %s: %w", id, err)
		}
		if now.Sub(last) >= minAge {
			if withDebris {
				plan.Debris = append(plan.Debris, id)
				plan.DebrisBytes += l.size[id]
			}
			continue
		}
		rec, err := r.ReadStartRecord(ctx, id)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return plan, err
		}
		running = append(running, rec)
	}
	if oldest == nil {
		return plan, nil // no backup to anchor WAL retention: keep all WAL
	}
	plan.OldestKeptWAL = oldest.StartWAL
	first, err := pg.ParseWALFileName(oldest.StartWAL)
	if err != nil {
		return plan, fmt.Errorf("backup %s: %w", oldest.ID, err)
	}
	firstSeg := first.SegNo(oldest.SegmentSize)
	for _, rec := range running {
		lsn, err := pg.ParseLSN(rec.StartLSN)
		if err != nil || !pg.ValidSegmentSize(rec.SegmentSize) {
			return plan, fmt.Errorf("running backup has a bad start record (%q): keeping all WAL", rec.StartLSN)
		}
		if seg := uint64(lsn) / uint64(rec.SegmentSize); seg < firstSeg {
			firstSeg = seg
			plan.OldestKeptWAL = lsn.Segment(first.Timeline, rec.SegmentSize).Name
		}
	}
	err = r.backend.List(ctx, "wal/", func(obj storage.ObjectInfo) error {
		name := obj.Name[strings.LastIndexByte(obj.Name, '/')+1:]
		wf, err := pg.ParseWALFileName(name)
		if err != nil {
			// A block map or roll-up goes with (the last of) its segments.
			_, last, _, ok := parseWALMapName(name)
			if !ok {
				return nil
			}
			wf, err = last, nil
		}
		if wf.Kind == pg.KindHistory {
			return nil
		}
		if wf.SegNo(oldest.SegmentSize) < firstSeg {
			plan.WAL = append(plan.WAL, obj.Name)
			plan.WALBytes += obj.Size
		}
		return nil
	})
	if err != nil {
		return plan, fmt.Errorf("list WAL: %w", err)
	}
	sort.Strings(plan.WAL)
	return plan, nil
}

// ApplyRetention deletes what plan lists: backups first (each becomes
// invisible before its data goes), then debris, then WAL.
func (r *Repository) ApplyRetention(ctx context.Context, plan RetentionPlan) error {
	for _, id := range append(append([]string{}, plan.Backups...), plan.Debris...) {
		if err := r.DeleteBackup(ctx, id); err != nil {
			return err
		}
	}
	for _, name := range plan.WAL {
		if err := r.backend.Delete(ctx, name); err != nil {
			return fmt.Errorf("delete %s: %w", name, err)
		}
	}
	return nil
}

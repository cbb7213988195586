// Package maintain is what pgkeep does to a repository besides writing WAL
// and restoring: a base backup followed by the configured retention,
// delete (retention, or one backup), keep marks, and verify. Each call
// takes an options struct and writes what its command prints.
package maintain

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/pgkeep/pgkeep/archive"
	"github.com/pgkeep/pgkeep/repo"
)

// BackupOptions is `pgkeep backup`.
type BackupOptions struct {
	Backup archive.BackupOptions
	// RetainFull and RetainDays are the configured retention
	// (retention.full, retention.days) applied after the backup; both 0:
	// none.
	RetainFull, RetainDays int
	// Out gets the new backup's ID; Log the retention lines.
	Out, Log io.Writer
}

// Backup takes a base backup, prints its ID, then applies the configured
// retention. The backup is committed whatever happens to the retention; a
// failure there is the call's failure so that it is seen.
func Backup(ctx context.Context, r *repo.Repository, o BackupOptions) error {
	m, err := archive.Backup(ctx, r, o.Backup)
	if err != nil {
		return err
	}
	fmt.Fprintln(o.Out, m.ID)
	if o.RetainFull == 0 && o.RetainDays == 0 {
		return nil
	}
	plan, err := r.PlanRetention(ctx, repo.RetentionOptions{RetainFull: o.RetainFull, RetainDays: o.RetainDays, DebrisMinAge: time.Hour, Now: time.Now()})
	if err == nil {
		err = r.ApplyRetention(ctx, plan)
	}
	if err != nil {
		return fmt.Errorf("backup committed, but retention failed: %w", err)
	}
	PrintPlan(o.Log, plan, "deleted", "retention: ")
	return nil
}

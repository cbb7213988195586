package maintain

import (
	"context"
	"fmt"
	"io"
	"path"
	"time"

	"github.com/pgkeep/pgkeep/internal/human"
	"github.com/pgkeep/pgkeep/repo"
)

// DeleteOptions is `pgkeep delete`: a retention, or one backup.
type DeleteOptions struct {
	// Retention keeps RetainFull or RetainDays backups (Now is set by
	// Delete); ignored when BackupID is set.
	Retention repo.RetentionOptions
	// BackupID deletes that one backup and the WAL no remaining backup
	// needs.
	BackupID string
	// DryRun prints what would go and deletes nothing.
	DryRun bool
	Out    io.Writer
}

// Delete plans the deletion, prints it, and applies it unless DryRun.
func Delete(ctx context.Context, r *repo.Repository, o DeleteOptions) error {
	o.Retention.Now = time.Now()
	var plan repo.RetentionPlan
	var err error
	if o.BackupID != "" {
		plan, err = r.PlanDeleteBackup(ctx, o.BackupID, o.Retention.Now)
	} else {
		plan, err = r.PlanRetention(ctx, o.Retention)
	}
	if err != nil {
		return err
	}
	verb := "deleted"
	if o.DryRun {
		verb = "would delete"
	}
	PrintPlan(o.Out, plan, verb, "")
	if o.DryRun {
		return nil
	}
	return r.ApplyRetention(ctx, plan)
}

// PrintPlan prints one line per backup and, when anything goes, a line of
// totals (not one per WAL file: there may be thousands).
func PrintPlan(out io.Writer, plan repo.RetentionPlan, verb, prefix string) {
	for _, id := range plan.Backups {
		fmt.Fprintf(out, "%s%s backup %s\n", prefix, verb, id)
	}
	for _, id := range plan.Debris {
		fmt.Fprintf(out, "%s%s incomplete backup %s\n", prefix, verb, id)
	}
	for _, id := range plan.Kept {
		fmt.Fprintf(out, "%skept backup %s (backup keep)\n", prefix, id)
	}
	if len(plan.Backups)+len(plan.Debris)+len(plan.WAL) == 0 {
		return // nothing goes: nothing to total
	}
	fmt.Fprintf(out, "%s%s %d backup(s) (%s), %d incomplete backup(s) (%s) and %d WAL file(s) (%s): %s in all\n", prefix, verb,
		len(plan.Backups), human.Bytes(plan.BackupBytes), len(plan.Debris), human.Bytes(plan.DebrisBytes),
		len(plan.WAL), human.Bytes(plan.WALBytes), human.Bytes(plan.BackupBytes+plan.DebrisBytes+plan.WALBytes))
	if len(plan.WAL) > 0 {
		fmt.Fprintf(out, "%sWAL %s: %s .. %s\n", prefix, verb, path.Base(plan.WAL[0]), path.Base(plan.WAL[len(plan.WAL)-1]))
	}
}

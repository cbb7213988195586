package maintain

import (
	"context"
	"errors"
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
	// MaxRepackBytes bounds the live bytes of mostly dead packs copied
	// into new packs after the deletion (repo.Repack); 0: no repack.
	MaxRepackBytes int64
	// RepackGrace keeps a repacked pack that long for in-flight restores
	// (the CLI's default is repo.DefaultRepackGrace; 0: at once).
	RepackGrace time.Duration
	Out         io.Writer
	// Err, when set, gets the pack summary (stdout stays exactly what
	// --dry-run prints, and empty when nothing happens).
	Err io.Writer
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
	if err := r.ApplyRetention(ctx, plan); err != nil {
		return err
	}
	res, err := r.Repack(ctx, repo.RepackOptions{MaxBytes: o.MaxRepackBytes, Grace: o.RepackGrace})
	if errors.Is(err, repo.ErrNoIdentity) {
		// Which blocks are live is in the manifests: no key, no repack.
		fmt.Fprintf(o.Out, "not repacked: reading the manifests needs the repository key\n")
		return nil
	}
	if err != nil {
		return fmt.Errorf("repack: %w", err)
	}
	if len(res.Repacked)+len(res.Removed) > 0 {
		fmt.Fprintf(o.Out, "repacked %d pack(s) (%s copied), removed %d repacked pack(s) (%s)\n",
			len(res.Repacked), human.Bytes(res.Copied), len(res.Removed), human.Bytes(res.Freed))
	}
	if res.LiveBytes > 0 && o.Err != nil {
		// How much of what the repository stores is dead weight, as the
		// repack found it (before the packs it relocated are removed).
		fmt.Fprintf(o.Err, "%s%s of packs, %s named by kept backups (%.2fx)\n", PackSummaryPrefix,
			human.Bytes(res.DataBytes), human.Bytes(res.LiveBytes), float64(res.DataBytes)/float64(res.LiveBytes))
	}
	return nil
}

// PackSummaryPrefix starts delete's summary on stderr: the packs stored
// and the bytes of them kept backups name.
const PackSummaryPrefix = "repository: "

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

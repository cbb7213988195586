// Package inspect is what pgkeep shows of a repository without changing
// it: info (the recovery window, WAL, backups) and backup list and show,
// as text tables or JSON.
package inspect

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/pgkeep/pgkeep/internal/human"
	"github.com/pgkeep/pgkeep/repo"
)

// Info prints the repository's info, as JSON or text.
func Info(ctx context.Context, r *repo.Repository, asJSON bool, out io.Writer) error {
	inf, err := r.Info(ctx, time.Now())
	if err != nil {
		return fmt.Errorf("info: %w", err)
	}
	if asJSON {
		return human.JSON(out, inf)
	}
	return PrintInfo(out, inf)
}

// PrintInfo writes inf as text.
func PrintInfo(out io.Writer, inf *repo.Info) error {
	fmt.Fprintf(out, "repository:      %s (id %s, encryption %s)\n", inf.Repository, inf.ID, inf.Encryption)
	if inf.SystemIdentifier != "" {
		fmt.Fprintf(out, "system:          %s\n", inf.SystemIdentifier)
	}
	fmt.Fprintf(out, "size:            %s (WAL %s, backups %s, of which incomplete %s)\n", human.Bytes(inf.Size.Total),
		human.Bytes(inf.Size.WAL), human.Bytes(inf.Size.Backups), human.Bytes(inf.Size.Incomplete))
	if w := inf.RecoveryWindow; w != nil {
		fmt.Fprintf(out, "recovery window: timeline %d\n  first:         %s  LSN %s  (end of backup %s)\n  last:          %s  LSN %s  (end of %s, archived then)\n",
			w.Timeline, w.FirstTime.UTC().Format(time.RFC3339Nano), w.FirstLSN, w.FirstBackup,
			w.LastTime.UTC().Format(time.RFC3339), w.LastLSN, w.LastWAL)
	} else {
		fmt.Fprintln(out, "recovery window: none (no backup with its WAL archived)")
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIMELINE\tFORKED FROM\tFIRST WAL\tLAST WAL\tLAST ARCHIVED\tSEGMENTS\tSIZE\tGAPS")
	for _, t := range inf.Timelines {
		from := "-"
		if t.Parent != 0 {
			from = fmt.Sprintf("%d at %s", t.Parent, t.Begin)
		}
		last := "-"
		if t.LastArchived != nil {
			last = t.LastArchived.UTC().Format(time.RFC3339)
		}
		gaps := "none"
		if t.GapCount > 0 {
			g := t.Gaps[0]
			gaps = fmt.Sprintf("%d, first %s..%s (%d segments)", t.GapCount, g.From, g.To, g.Segments)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", t.Timeline, from, human.Dash(t.FirstWAL), human.Dash(t.LastWAL), last, t.Segments, human.Bytes(t.Bytes), gaps)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(out)
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BACKUP\tTYPE\tSTART\tSTOP\tSTART LSN\tSTOP LSN\tTL\tDB SIZE\tSTORED\tKEPT\tANNOTATIONS")
	for _, b := range inf.Backups {
		kept := "-"
		if b.Kept {
			kept = "yes"
			if b.KeepUntil != nil {
				kept = "until " + b.KeepUntil.UTC().Format(time.RFC3339)
			}
		}
		typ := "full"
		if !b.OnRecoveryPath {
			typ = "full (off the recovery timeline)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", b.ID, typ, b.StartTime.UTC().Format(time.RFC3339),
			b.StopTime.UTC().Format(time.RFC3339), b.StartLSN, b.StopLSN, b.Timeline, human.Bytes(b.DataSize), human.Bytes(b.StoredSize),
			kept, human.Annotations(b.Annotations))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, rb := range inf.Running {
		pct := ""
		if rb.BytesTotal > 0 {
			pct = fmt.Sprintf(" (%.0f %%)", 100*float64(rb.BytesDone)/float64(rb.BytesTotal))
		}
		fmt.Fprintf(out, "\nrunning: %s on %s (pid %d), started %s: %s of %s%s at %s/s, heartbeat %s\n", rb.ID, human.Dash(rb.Host), rb.PID,
			rb.Started.UTC().Format(time.RFC3339), human.Bytes(rb.BytesDone), human.Bytes(rb.BytesTotal), pct,
			human.Bytes(int64(rb.Rate)), rb.Heartbeat.UTC().Format(time.RFC3339))
	}
	for _, id := range inf.Incomplete {
		fmt.Fprintf(out, "\nincomplete: %s (failed or abandoned; delete removes it)\n", id)
	}
	return nil
}

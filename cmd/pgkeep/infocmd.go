package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgkeep/pgkeep/repo"
)

func newInfoCmd(a *app) *cobra.Command {
	var (
		asJSON bool
		output string
	)
	cmd := &cobra.Command{
		Use:   "info",
		Short: "Show the repository: archived WAL, the recovery window, backups, a running backup",
		Long: `info shows the repository at a glance: per timeline the archived WAL range and any
gaps; the recovery window (the first point a restore can reach, the oldest backup's
consistency point, and the last, the end of the newest WAL archived without a gap
after the newest backup, on the timeline recovery follows by default); every backup
with its type, times, LSNs, sizes, annotations and keep flag; the repository's size;
and a backup running now with its progress.

It reads one listing of wal/ and of backups/ plus the backups' summaries and the
timeline history files, never the WAL itself, so it is fast on a big repository, and
needs no key.`,
		Example: "  pgkeep info\n  pgkeep info --json | jq .recovery_window\n  pgkeep info -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.load(); err != nil {
				return err
			}
			switch output {
			case "", "table":
			case "json":
				asJSON = true
			default:
				return &configError{fmt.Sprintf("--output %q: use json or table", output)}
			}
			ctx := cmd.Context()
			r, err := openRepo(ctx, a.cfg)
			if err != nil {
				return err
			}
			inf, err := r.Info(ctx, time.Now())
			if err != nil {
				return fmt.Errorf("info: %w", err)
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), inf)
			}
			return printInfo(cmd.OutOrStdout(), inf)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVarP(&output, "output", "o", "", "json or table (the default)")
	return cmd
}

func printInfo(out io.Writer, inf *repo.Info) error {
	fmt.Fprintf(out, "repository:      %s (id %s, encryption %s)\n", inf.Repository, inf.ID, inf.Encryption)
	if inf.SystemIdentifier != "" {
		fmt.Fprintf(out, "system:          %s\n", inf.SystemIdentifier)
	}
	fmt.Fprintf(out, "size:            %s (WAL %s, backups %s, of which incomplete %s)\n", humanBytes(inf.Size.Total),
		humanBytes(inf.Size.WAL), humanBytes(inf.Size.Backups), humanBytes(inf.Size.Incomplete))
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
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", t.Timeline, from, dash(t.FirstWAL), dash(t.LastWAL), last, t.Segments, humanBytes(t.Bytes), gaps)
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
			b.StopTime.UTC().Format(time.RFC3339), b.StartLSN, b.StopLSN, b.Timeline, humanBytes(b.DataSize), humanBytes(b.StoredSize),
			kept, annotationText(b.Annotations))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, rb := range inf.Running {
		pct := ""
		if rb.BytesTotal > 0 {
			pct = fmt.Sprintf(" (%.0f %%)", 100*float64(rb.BytesDone)/float64(rb.BytesTotal))
		}
		fmt.Fprintf(out, "\nrunning: %s on %s (pid %d), started %s: %s of %s%s at %s/s, heartbeat %s\n", rb.ID, dash(rb.Host), rb.PID,
			rb.Started.UTC().Format(time.RFC3339), humanBytes(rb.BytesDone), humanBytes(rb.BytesTotal), pct,
			humanBytes(int64(rb.Rate)), rb.Heartbeat.UTC().Format(time.RFC3339))
	}
	for _, id := range inf.Incomplete {
		fmt.Fprintf(out, "\nincomplete: %s (failed or abandoned; delete removes it)\n", id)
	}
	return nil
}

package status

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pgkeep/pgkeep/internal/human"
	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/scheduler"
)

// Print writes rep as text.
func Print(out io.Writer, rep Report) {
	if sr := rep.Standalone; sr != nil {
		fmt.Fprintf(out, "Daemon without Patroni (daemon.ha: none, records in %s)\n", sr.LockDir)
		if sr.Error != "" {
			fmt.Fprintf(out, "  error: %s\n", sr.Error)
		} else {
			printJobs(out, sr.Jobs)
		}
	} else if p := rep.Patroni; p == nil {
		fmt.Fprintln(out, "Patroni: not configured (set etcd.endpoints and patroni.scope)")
	} else {
		fmt.Fprintf(out, "Patroni cluster %s (%s on %s)\n", p.Scope, p.Prefix, strings.Join(p.Endpoints, ","))
		if p.Error != "" {
			fmt.Fprintf(out, "  error: %s\n", p.Error)
		} else {
			printPatroni(out, p)
		}
	}
	fmt.Fprintln(out)
	local := rep.Postgres
	fmt.Fprintf(out, "Local PostgreSQL (%s)\n", local.Connection)
	if local.Error != "" {
		fmt.Fprintf(out, "  error: %s\n", local.Error)
		return
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	role := "primary"
	if local.InRecovery {
		role = "standby (in recovery)"
	}
	fmt.Fprintf(tw, "  role:\t%s\n", role)
	fmt.Fprintf(tw, "  archive_mode:\t%s\n", local.ArchiveMode)
	if local.LastArchivedWAL != "" {
		fmt.Fprintf(tw, "  last archived:\t%s at %s\n", local.LastArchivedWAL, when(local.LastArchivedTime))
	} else {
		fmt.Fprintf(tw, "  last archived:\tnone\n")
	}
	fmt.Fprintf(tw, "  archived:\t%d\n", local.ArchivedCount)
	fmt.Fprintf(tw, "  failed:\t%d\n", local.FailedCount)
	if local.LastFailedWAL != "" {
		fmt.Fprintf(tw, "  last failure:\t%s at %s\n", local.LastFailedWAL, when(local.LastFailedTime))
	}
	if local.StatsReset != nil {
		fmt.Fprintf(tw, "  counted since:\t%s\n", when(local.StatsReset))
	}
	tw.Flush()
}

func printPatroni(out io.Writer, p *Patroni) {
	switch {
	case p.Leader == "":
		fmt.Fprintln(out, "  leader: none (no member holds the leader key)")
	case p.LeaderOptime != nil:
		fmt.Fprintf(out, "  leader: %s (WAL position %s)\n", p.Leader, pg.LSN(*p.LeaderOptime))
	default:
		fmt.Fprintf(out, "  leader: %s\n", p.Leader)
	}
	if p.Paused {
		fmt.Fprintln(out, "  maintenance mode (paused)")
	}
	if p.SwitchoverPending {
		fmt.Fprintln(out, "  switchover/failover pending")
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  MEMBER\tROLE\tSTATE\tTL\tLAG (bytes)\tTAGS")
	for _, m := range p.Members {
		tl, lag := "-", "unknown"
		if m.Timeline > 0 {
			tl = fmt.Sprint(m.Timeline)
		}
		if m.LagBytes != nil {
			lag = fmt.Sprint(*m.LagBytes)
		}
		state := m.State
		if m.Malformed {
			state = "(unreadable member key)"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", m.Name, displayRole(p, m), human.Dash(state), tl, lag, tagList(m.Tags))
	}
	tw.Flush()
	printJobs(out, p.Jobs)
}

// printJobs prints the last run of each daemon job.
func printJobs(out io.Writer, jobs []scheduler.Run) {
	if len(jobs) == 0 {
		fmt.Fprintln(out, "  scheduled jobs: no run recorded")
		return
	}
	fmt.Fprintln(out, "  last scheduled runs:")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  JOB\tSCHEDULED\tNODE\tROLE\tSTATUS\tBACKUP\tDURATION\tBYTES\tERROR")
	for _, r := range jobs {
		status := r.Status
		if r.Status == scheduler.StatusFailed && !r.NextAttempt.IsZero() {
			status = fmt.Sprintf("failed (attempt %d, retry after %s)", r.Attempt, r.NextAttempt.Format(time.RFC3339))
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Job, r.Scheduled.UTC().Format(time.RFC3339), r.Node, human.Dash(r.Role), status,
			human.Dash(r.BackupID), time.Duration(r.DurationSeconds*float64(time.Second)).Round(time.Second), human.Bytes(r.Bytes), human.Dash(r.Error))
	}
	tw.Flush()
}

func displayRole(p *Patroni, m Member) string {
	switch {
	case m.Leader && (p.StandbyCluster || m.Role == "standby_leader"):
		return "standby leader"
	case m.Leader:
		return "leader"
	case m.SyncStandby:
		return "sync standby"
	}
	return human.Dash(strings.ReplaceAll(m.Role, "_", " "))
}

// tagList shows boolean tags by name and others as name=value, sorted.
func tagList(tags map[string]any) string {
	var parts []string
	for k, v := range tags {
		switch t := v.(type) {
		case bool:
			if t {
				parts = append(parts, k)
			} else {
				parts = append(parts, k+"=false")
			}
		default:
			parts = append(parts, fmt.Sprintf("%s=%v", k, v))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func when(t *time.Time) string {
	if t == nil {
		return "?"
	}
	return fmt.Sprintf("%s (%s ago)", t.Format(time.RFC3339), time.Since(*t).Round(time.Second))
}

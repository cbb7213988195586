package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgkeep/pgkeep/ha"
	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/scheduler"
)

// pgStatusTimeout bounds connecting to the local PostgreSQL and querying it.
const pgStatusTimeout = 5 * time.Second

// statusReport is `pgkeep status --json`.
type statusReport struct {
	// Patroni is absent when etcd.endpoints is not set.
	Patroni *patroniReport `json:"patroni,omitempty"`
	// Standalone is the daemon without Patroni (daemon.ha: none): the
	// last run of each job from the records in daemon.lock_dir.
	Standalone *standaloneReport `json:"standalone,omitempty"`
	Postgres   *postgresReport   `json:"postgres"`
}

type standaloneReport struct {
	LockDir string          `json:"lock_dir"`
	Jobs    []scheduler.Run `json:"jobs"`
	Error   string          `json:"error,omitempty"`
}

type patroniReport struct {
	Scope     string   `json:"scope"`
	Prefix    string   `json:"prefix"`
	Endpoints []string `json:"endpoints"`
	// Leader is "" when no member holds the leader key.
	Leader            string         `json:"leader"`
	LeaderOptime      *uint64        `json:"leader_optime"`
	Paused            bool           `json:"paused,omitempty"`
	StandbyCluster    bool           `json:"standby_cluster,omitempty"`
	SwitchoverPending bool           `json:"switchover_pending,omitempty"`
	Members           []memberReport `json:"members"`
	// Jobs is the last run of each `pgkeep daemon` job, from the records
	// under <prefix>pgkeep/records/: the newest final record, or a newer
	// failed or aborted attempt still within its retries.
	Jobs  []scheduler.Run `json:"jobs"`
	Error string          `json:"error,omitempty"`
}

type memberReport struct {
	Name string `json:"name"`
	// Role is Patroni's ("master", "replica", ...); Leader says whether the
	// member holds the leader key.
	Role         string         `json:"role"`
	Leader       bool           `json:"leader"`
	SyncStandby  bool           `json:"sync_standby,omitempty"`
	State        string         `json:"state"`
	Timeline     int            `json:"timeline,omitempty"`
	XLogLocation *uint64        `json:"xlog_location"`
	LagBytes     *uint64        `json:"lag_bytes"` // null: unknown
	Tags         map[string]any `json:"tags,omitempty"`
	ConnURL      string         `json:"conn_url,omitempty"`
	APIURL       string         `json:"api_url,omitempty"`
	Malformed    bool           `json:"malformed,omitempty"`
}

// postgresReport is the local PostgreSQL's archiver, from pg_stat_archiver.
type postgresReport struct {
	// Connection describes where pgkeep connected (no password).
	Connection string `json:"connection"`
	// Error says why PostgreSQL could not be read; the rest is then absent.
	Error string `json:"error,omitempty"`
	*archiverReport
}

type archiverReport struct {
	InRecovery       bool       `json:"in_recovery"`
	ArchiveMode      string     `json:"archive_mode,omitempty"`
	ArchivedCount    int64      `json:"archived_count"`
	LastArchivedWAL  string     `json:"last_archived_wal,omitempty"`
	LastArchivedTime *time.Time `json:"last_archived_time,omitempty"`
	FailedCount      int64      `json:"failed_count"`
	LastFailedWAL    string     `json:"last_failed_wal,omitempty"`
	LastFailedTime   *time.Time `json:"last_failed_time,omitempty"`
	StatsReset       *time.Time `json:"stats_reset,omitempty"`
}

func newStatusCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the Patroni cluster (from etcd) and this node's WAL archiving",
		Long: `status prints the Patroni cluster as etcd holds it: the leader and every member
with its role, state, timeline, replication lag in bytes behind the leader and
tags. It needs etcd.endpoints and patroni.scope; without them only the local
part is shown.

The local part is PostgreSQL's archiver (pg_stat_archiver): the last archived
WAL file and when, and failures. pgkeep connects with postgres.dsn, or the
libpq PG* environment variables when that is empty.

Exit status: 0 when everything configured could be read; 1 when etcd could
not be read, or when etcd is not configured and PostgreSQL is unreachable;
2 for configuration errors.`,
		Example: `  pgkeep status
  pgkeep status --json | jq -r .patroni.leader`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.load(); err != nil {
				return err
			}
			return runStatus(cmd.Context(), a, asJSON, cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of text")
	return cmd
}

func runStatus(ctx context.Context, a *app, asJSON bool, out io.Writer) error {
	var rep statusReport
	var failure error
	if a.cfg.Daemon.HA == "none" {
		sr := &standaloneReport{LockDir: a.cfg.Daemon.LockDir, Jobs: []scheduler.Run{}}
		jobs, err := scheduler.LocalLatestRuns(sr.LockDir)
		if err != nil {
			sr.Error, failure = err.Error(), err
		} else {
			sr.Jobs = jobs
		}
		rep.Standalone = sr
	} else if len(a.cfg.Etcd.Endpoints) > 0 {
		p, err := patroniStatus(ctx, a)
		var ce *configError
		if errors.As(err, &ce) {
			return err
		}
		rep.Patroni, failure = p, err
	}
	rep.Postgres = postgresStatus(ctx, a.cfg)
	if rep.Patroni == nil && rep.Postgres.Error != "" && failure == nil {
		failure = fmt.Errorf("local PostgreSQL: %s", rep.Postgres.Error)
	}
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		printStatus(out, rep)
	}
	if failure != nil {
		return &exitError{code: exitFailure, err: failure}
	}
	return nil
}

func patroniStatus(ctx context.Context, a *app) (*patroniReport, error) {
	cfg := a.cfg
	rep := &patroniReport{
		Scope:     cfg.Patroni.Scope,
		Prefix:    ha.BasePath(cfg.Patroni.Namespace, cfg.Patroni.Scope) + "/",
		Endpoints: cfg.Etcd.Endpoints,
		Members:   []memberReport{},
	}
	c, err := openHA(ctx, cfg, a.log)
	if err != nil {
		rep.Error = err.Error()
		return rep, err
	}
	defer c.Close()
	rep.Endpoints = c.Endpoints()
	v, err := c.View(ctx)
	if err != nil {
		rep.Error = err.Error()
		return rep, err
	}
	rep.Leader, rep.Paused, rep.StandbyCluster, rep.SwitchoverPending = v.Leader, v.Paused, v.StandbyCluster, v.SwitchoverPending
	if opt, ok := v.LeaderOptime(); ok {
		rep.LeaderOptime = &opt
	}
	for _, m := range v.Members {
		mr := memberReport{
			Name:        m.Name,
			Role:        m.Role,
			Leader:      v.IsLeader(m.Name),
			SyncStandby: v.IsSyncStandby(m.Name),
			State:       m.State,
			Timeline:    m.Timeline,
			Tags:        m.Tags,
			ConnURL:     redactURL(m.ConnURL),
			APIURL:      redactURL(m.APIURL),
			Malformed:   m.Malformed,
		}
		if m.HasXLogLocation {
			x := m.XLogLocation
			mr.XLogLocation = &x
		}
		if lag, ok := v.Lag(m); ok {
			mr.LagBytes = &lag
		}
		rep.Members = append(rep.Members, mr)
	}
	jobs, err := scheduler.LatestRuns(ctx, c)
	if err != nil {
		rep.Error = err.Error()
		return rep, err
	}
	rep.Jobs = jobs
	return rep, nil
}

// redactURL drops a password from a URL (Patroni writes none, but a
// hand-edited key might hold one).
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

func postgresStatus(ctx context.Context, cfg Config) *postgresReport {
	rep := &postgresReport{Connection: "PG* environment"}
	pc, err := pgx.ParseConfig(cfg.Postgres.DSN)
	if err != nil {
		// Not echoed: the string may hold a password.
		rep.Error = "postgres.dsn is not a valid connection string"
		return rep
	}
	rep.Connection = fmt.Sprintf("host=%s port=%d user=%s", pc.Host, pc.Port, pc.User)
	if pc.Database != "" {
		rep.Connection += " dbname=" + pc.Database
	}
	ctx, cancel := context.WithTimeout(ctx, pgStatusTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, pc)
	if err != nil {
		rep.Error = oneLine(err)
		return rep
	}
	defer conn.Close(context.Background())
	var ar archiverReport
	var lastWAL, failedWAL *string
	err = conn.QueryRow(ctx, `SELECT pg_is_in_recovery(), current_setting('archive_mode'),
		archived_count, last_archived_wal, last_archived_time,
		failed_count, last_failed_wal, last_failed_time, stats_reset
		FROM pg_stat_archiver`).Scan(&ar.InRecovery, &ar.ArchiveMode,
		&ar.ArchivedCount, &lastWAL, &ar.LastArchivedTime,
		&ar.FailedCount, &failedWAL, &ar.LastFailedTime, &ar.StatsReset)
	if err != nil {
		rep.Error = "pg_stat_archiver: " + oneLine(err)
		return rep
	}
	if lastWAL != nil {
		ar.LastArchivedWAL = *lastWAL
	}
	if failedWAL != nil {
		ar.LastFailedWAL = *failedWAL
	}
	for _, t := range []*time.Time{ar.LastArchivedTime, ar.LastFailedTime, ar.StatsReset} {
		if t != nil {
			*t = t.UTC()
		}
	}
	rep.archiverReport = &ar
	return rep
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

func printStatus(out io.Writer, rep statusReport) {
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

func printPatroni(out io.Writer, p *patroniReport) {
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
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", m.Name, displayRole(p, m), dash(state), tl, lag, tagList(m.Tags))
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
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Job, r.Scheduled.UTC().Format(time.RFC3339), r.Node, dash(r.Role), status,
			dash(r.BackupID), time.Duration(r.DurationSeconds*float64(time.Second)).Round(time.Second), humanBytes(r.Bytes), dash(r.Error))
	}
	tw.Flush()
}

func displayRole(p *patroniReport, m memberReport) string {
	switch {
	case m.Leader && (p.StandbyCluster || m.Role == "standby_leader"):
		return "standby leader"
	case m.Leader:
		return "leader"
	case m.SyncStandby:
		return "sync standby"
	}
	return dash(strings.ReplaceAll(m.Role, "_", " "))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
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

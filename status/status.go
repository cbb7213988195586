// Package status is `pgkeep status`: the Patroni cluster as etcd holds it
// (or the standalone daemon's run records), the last run of each daemon
// job, and the local PostgreSQL's archiver.
package status

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgkeep/pgkeep/ha"
	"github.com/pgkeep/pgkeep/internal/human"
	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/scheduler"
)

// pgTimeout bounds connecting to the local PostgreSQL and querying it.
const pgTimeout = 5 * time.Second

// Report is `pgkeep status --json`.
type Report struct {
	// Patroni is absent when etcd.endpoints is not set.
	Patroni *Patroni `json:"patroni,omitempty"`
	// Standalone is the daemon without Patroni (daemon.ha: none): the
	// last run of each job from the records in daemon.lock_dir.
	Standalone *Standalone `json:"standalone,omitempty"`
	Postgres   *Postgres   `json:"postgres"`
}

// Standalone is the daemon's view without Patroni.
type Standalone struct {
	LockDir string          `json:"lock_dir"`
	Jobs    []scheduler.Run `json:"jobs"`
	Error   string          `json:"error,omitempty"`
}

// Patroni is the cluster as etcd holds it.
type Patroni struct {
	Scope     string   `json:"scope"`
	Prefix    string   `json:"prefix"`
	Endpoints []string `json:"endpoints"`
	// Leader is "" when no member holds the leader key.
	Leader            string   `json:"leader"`
	LeaderOptime      *uint64  `json:"leader_optime"`
	Paused            bool     `json:"paused,omitempty"`
	StandbyCluster    bool     `json:"standby_cluster,omitempty"`
	SwitchoverPending bool     `json:"switchover_pending,omitempty"`
	Members           []Member `json:"members"`
	// Jobs is the last run of each `pgkeep daemon` job, from the records
	// under <prefix>pgkeep/records/: the newest final record, or a newer
	// failed or aborted attempt still within its retries.
	Jobs  []scheduler.Run `json:"jobs"`
	Error string          `json:"error,omitempty"`
}

// Member is one Patroni member.
type Member struct {
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

// Postgres is the local PostgreSQL's archiver, from pg_stat_archiver.
type Postgres struct {
	// Connection describes where pgkeep connected (no password).
	Connection string `json:"connection"`
	// Error says why PostgreSQL could not be read; the rest is then absent.
	Error string `json:"error,omitempty"`
	*pg.ArchiverStatus
}

// Options says what to report and how.
type Options struct {
	// Standalone: the daemon runs without Patroni (daemon.ha: none) and
	// keeps its records in LockDir.
	Standalone bool
	LockDir    string
	// HA is how to reach etcd; nil when it is not configured (and
	// ignored when Standalone).
	HA *ha.Options
	// DSN is the local PostgreSQL (postgres.dsn; "": the PG* variables).
	DSN  string
	JSON bool
	Out  io.Writer
}

// Show prints the report, as text or JSON. Its error (after printing)
// says that something configured could not be read: etcd (or the
// standalone records), or, when etcd is not configured, PostgreSQL.
func Show(ctx context.Context, o Options) error {
	rep, failure := Collect(ctx, o)
	if o.JSON {
		if err := human.JSON(o.Out, rep); err != nil {
			return err
		}
	} else {
		Print(o.Out, rep)
	}
	return failure
}

// Collect gathers the report; its error is Show's.
func Collect(ctx context.Context, o Options) (Report, error) {
	var rep Report
	var failure error
	if o.Standalone {
		sr := &Standalone{LockDir: o.LockDir, Jobs: []scheduler.Run{}}
		jobs, err := scheduler.LocalLatestRuns(sr.LockDir)
		if err != nil {
			sr.Error, failure = err.Error(), err
		} else {
			sr.Jobs = jobs
		}
		rep.Standalone = sr
	} else if o.HA != nil {
		rep.Patroni, failure = patroni(ctx, *o.HA)
	}
	rep.Postgres = LocalPostgres(ctx, o.DSN)
	if rep.Patroni == nil && rep.Postgres.Error != "" && failure == nil {
		failure = fmt.Errorf("local PostgreSQL: %s", rep.Postgres.Error)
	}
	return rep, failure
}

func patroni(ctx context.Context, o ha.Options) (*Patroni, error) {
	rep := &Patroni{
		Scope:     o.Scope,
		Prefix:    ha.BasePath(o.Namespace, o.Scope) + "/",
		Endpoints: o.Endpoints,
		Members:   []Member{},
	}
	c, err := ha.Connect(ctx, o)
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
		mr := Member{
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

// LocalPostgres reads the archiver of the PostgreSQL at dsn ("": the PG*
// variables), within a few seconds. It never fails: what went wrong is in
// the report's Error, and the daemon's archive metrics use it the same way.
func LocalPostgres(ctx context.Context, dsn string) *Postgres {
	rep := &Postgres{Connection: "PG* environment"}
	pc, err := pgx.ParseConfig(dsn)
	if err != nil {
		// Not echoed: the string may hold a password.
		rep.Error = "postgres.dsn is not a valid connection string"
		return rep
	}
	rep.Connection = fmt.Sprintf("host=%s port=%d user=%s", pc.Host, pc.Port, pc.User)
	if pc.Database != "" {
		rep.Connection += " dbname=" + pc.Database
	}
	ctx, cancel := context.WithTimeout(ctx, pgTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, pc)
	if err != nil {
		rep.Error = human.OneLine(err)
		return rep
	}
	defer conn.Close(context.Background())
	ar, err := pg.QueryArchiverStatus(ctx, conn)
	if err != nil {
		rep.Error = "pg_stat_archiver: " + human.OneLine(err)
		return rep
	}
	rep.ArchiverStatus = &ar
	return rep
}

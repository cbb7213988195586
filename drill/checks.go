package drill

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// sampleTables picks up to n tables (and materialized views) at random
// across the databases that accept connections, in turns, so that every
// database gets its share. They are pg_amcheck patterns: db.schema.name,
// each part quoted.
func (s *server) sampleTables(ctx context.Context, conn *pgx.Conn, n int) ([]string, error) {
	rows, err := conn.Query(ctx, `SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname`)
	if err != nil {
		return nil, fmt.Errorf("list databases: %w", err)
	}
	dbs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list databases: %w", err)
	}
	perDB := make([][]string, len(dbs))
	for i, db := range dbs {
		c, err := s.connect(ctx, db)
		if err != nil {
			return nil, fmt.Errorf("connect to database %q: %w", db, err)
		}
		rows, err := c.Query(ctx, `SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE c.relkind IN ('r', 'm') AND c.relpersistence = 'p' ORDER BY random() LIMIT $1`, n)
		if err == nil {
			var nsp, rel string
			_, err = pgx.ForEachRow(rows, []any{&nsp, &rel}, func() error {
				perDB[i] = append(perDB[i], patternQuote(db)+"."+patternQuote(nsp)+"."+patternQuote(rel))
				return nil
			})
		}
		c.Close(context.Background())
		if err != nil {
			return nil, fmt.Errorf("sample tables of database %q: %w", db, err)
		}
	}
	var out []string
	for more := true; more && len(out) < n; {
		more = false
		for i := range perDB {
			if len(perDB[i]) > 0 && len(out) < n {
				out = append(out, perDB[i][0])
				perDB[i] = perDB[i][1:]
				more = true
			}
		}
	}
	return out, nil
}

// patternQuote makes a name a literal pg_amcheck (psql) pattern part.
func patternQuote(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}

// amcheck runs pg_amcheck on a sample of tables, their indexes and TOAST,
// one job at a time, within o.AmcheckTimeout, without heapallindexed
// (which reads each index's table again). It installs the amcheck
// extension where it is missing: the copy is thrown away.
func (s *server) amcheck(ctx context.Context, conn *pgx.Conn, bins binaries, o Options) (int, error) {
	if _, err := os.Stat(bins.amcheck); err != nil {
		return 0, fmt.Errorf("pg_amcheck is not in %s (PostgreSQL 14 and later ship it; set the drill's amcheck relations to -1 to skip it)", bins.dir)
	}
	tables, err := s.sampleTables(ctx, conn, o.AmcheckRelations)
	if err != nil {
		return 0, err
	}
	if len(tables) == 0 {
		return 0, nil
	}
	args := []string{"-h", s.dir, "-p", strconv.Itoa(s.port), "-U", s.user, "--maintenance-db", s.maintDB, "-w",
		"--install-missing", "--jobs", "1"}
	for _, t := range tables {
		args = append(args, "-t", t)
	}
	cctx, cancel := context.WithTimeout(ctx, o.AmcheckTimeout)
	defer cancel()
	cmd := exec.CommandContext(cctx, bins.amcheck, args...)
	cmd.Env = cleanEnv()
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err = cmd.Run()
	s.log.Info("drill: pg_amcheck", "tables", len(tables), "elapsed", time.Since(start).Round(time.Millisecond), "ok", err == nil)
	if cctx.Err() != nil && ctx.Err() == nil {
		return len(tables), fmt.Errorf("pg_amcheck did not finish within %s on %d tables; give it more time or fewer tables", o.AmcheckTimeout, len(tables))
	}
	if err != nil {
		if ctx.Err() != nil {
			return len(tables), ctx.Err()
		}
		return len(tables), fmt.Errorf("pg_amcheck found a problem (%v): %s", err, firstLines(out.String(), 3))
	}
	return len(tables), nil
}

// cleanEnv is this process's environment without libpq's variables: the
// checks name their server explicitly and must not pick up a service file,
// options or a password meant for the member.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return env
}

func firstLines(s string, n int) string {
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
		if len(lines) == n {
			break
		}
	}
	// pg_amcheck prints "heap table "db.s.t", block 0, offset 1:" and
	// the problem on the next line: keep them one sentence.
	out := ""
	for i, l := range lines {
		switch {
		case i == 0:
		case strings.HasSuffix(lines[i-1], ":"):
			out += " "
		default:
			out += "; "
		}
		out += l
	}
	if len(out) > 600 {
		out = out[:600] + "…"
	}
	return out
}

// sqlCheck runs o.SQL in o.Database: it must return one row of one
// column, true.
func sqlCheck(ctx context.Context, s *server, o Options) error {
	cctx, cancel := context.WithTimeout(ctx, o.AmcheckTimeout)
	defer cancel()
	c, err := s.connect(cctx, o.Database)
	if err != nil {
		return fmt.Errorf("sql check: connect to database %q: %w", o.Database, err)
	}
	defer c.Close(context.Background())
	rows, err := c.Query(cctx, o.SQL)
	if err != nil {
		return fmt.Errorf("sql check: %w", err)
	}
	vals, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([]any, error) { return r.Values() })
	if err != nil {
		return fmt.Errorf("sql check: %w", err)
	}
	if len(vals) != 1 || len(vals[0]) != 1 {
		cols := 0
		if len(vals) > 0 {
			cols = len(vals[0])
		}
		return fmt.Errorf("sql check: returned %d row(s) of %d column(s); it must return one row of one boolean column", len(vals), cols)
	}
	if b, ok := vals[0][0].(bool); !ok || !b {
		return errors.New("sql check: returned " + fmt.Sprint(vals[0][0]) + ", not true")
	}
	return nil
}

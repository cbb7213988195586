package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgkeep/pgkeep/internal/pgtest"
)

// pageChecks checks a restored cluster below the rows: no tuple the
// visibility map calls all-visible or all-frozen is not (pg_visibility: a
// VM fork restored from a stale reference would say so), and, after a
// clean stop, every page's checksum matches (pg_checksums: a page stored
// torn or patched wrong would not). c must run with data checksums; it
// is stopped on return.
func pageChecks(t *testing.T, c *pgtest.Cluster) {
	t.Helper()
	if bad := visibilityMisses(t, c); len(bad) > 0 {
		t.Errorf("pg_visibility: the visibility map marks tuples all-visible/all-frozen that are not:\n%s", strings.Join(bad, "\n"))
	}
	c.Stop(t)
	out, err := checksumCheck(t, c)
	if err != nil {
		t.Errorf("pg_checksums --check: %v\n%s", err, out)
		return
	}
	for _, l := range strings.Split(out, "\n") {
		if n, ok := strings.CutPrefix(l, "Blocks scanned:"); ok {
			t.Logf("page checks of %s: visibility maps match; pg_checksums: %s blocks, none bad", c.DataDir, strings.TrimSpace(n))
		}
	}
}

// visibilityMisses returns one line per database, table and check for
// every table with a visibility map whose pg_check_visible or
// pg_check_frozen returns rows (with their first few TIDs).
func visibilityMisses(t *testing.T, c *pgtest.Cluster) []string {
	t.Helper()
	ctx := context.Background()
	conn := c.Conn(t)
	var sums string
	if err := conn.QueryRow(ctx, "SHOW data_checksums").Scan(&sums); err != nil || sums != "on" {
		t.Fatalf("restored cluster: data_checksums %q (%v); the page checks need them on", sums, err)
	}
	conn.Close(ctx)
	var bad []string
	forEachDatabase(t, c, func(db string, dc *pgx.Conn) {
		if _, err := dc.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_visibility"); err != nil {
			t.Fatalf("%s: create extension pg_visibility: %v", db, err)
		}
		for _, fn := range []string{"pg_check_visible", "pg_check_frozen"} {
			// Every relation with a visibility map: tables, materialized
			// views, TOAST tables, catalogs included.
			q := fmt.Sprintf(`SELECT c.oid::regclass::text, count(*), string_agg(v.t_ctid::text, ' ' ORDER BY v.t_ctid)
				FROM pg_class c, LATERAL %s(c.oid) v
				WHERE c.relkind IN ('r', 'm', 't') AND c.relpersistence <> 't'
				GROUP BY 1 ORDER BY 1`, fn)
			rows, err := dc.Query(ctx, q)
			if err != nil {
				t.Fatalf("%s: %s: %v", db, fn, err)
			}
			for rows.Next() {
				var rel, tids string
				var n int64
				if err := rows.Scan(&rel, &n, &tids); err != nil {
					t.Fatal(err)
				}
				if len(tids) > 200 {
					tids = tids[:200] + "..."
				}
				bad = append(bad, fmt.Sprintf("%s.%s: %s: %d tuples (%s)", db, rel, fn, n, tids))
			}
			if err := rows.Err(); err != nil {
				t.Fatalf("%s: %s: %v", db, fn, err)
			}
		}
	})
	return bad
}

// checksumCheck runs pg_checksums --check over the stopped cluster c as
// the user PostgreSQL runs as; it fails (exit 1) on any bad checksum or a
// cluster not shut down cleanly.
func checksumCheck(t *testing.T, c *pgtest.Cluster) (string, error) {
	t.Helper()
	out, err := pgtest.RunErr(t, nil, "pg_checksums", "--check", "-D", c.DataDir)
	if err == nil && !strings.Contains(out, "Bad checksums:  0") {
		err = fmt.Errorf("no %q in its report", "Bad checksums:  0")
	}
	return out, err
}

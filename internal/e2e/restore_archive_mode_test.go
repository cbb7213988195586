package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/pgtest"
)

// TestRestoreArchiveModeOff: a test copy restored with --archive-mode off
// and promoted pushes nothing into the repository it came from, although
// the backup's postgresql.conf archives into it; --archive-mode preserve
// (the default) keeps archiving, which the control run shows.
func TestRestoreArchiveModeOff(t *testing.T) {
	a := fsMarkedArchive(t)
	before := repoWAL(t, a.r)
	for _, mode := range []string{"off", "preserve"} {
		dir := filepath.Join(pgtest.TempDir(t), "restored-"+mode)
		pgtest.MkdirFor(t, dir)
		res := runPgkeep(t, a.r.env, "", "restore", "--pgdata", dir, "--archive-mode", mode)
		if res.code != 0 {
			t.Fatalf("restore --archive-mode %s: exit %d\n%s", mode, res.code, res.stderr)
		}
		// The postmaster has the repository's environment: with archiving
		// on, it would push into the repository.
		c := pgtest.Existing(t, dir, pgtest.Options{Env: a.r.env})
		c.Start(t)
		waitRecoveryDone(t, c, false)
		if got := marks(t, c); got != allMarks {
			t.Fatalf("%s: marks %s", mode, got)
		}
		conn := c.Conn(t)
		var am string
		conn.QueryRow(context.Background(), "SHOW archive_mode").Scan(&am)
		c.Exec(t, conn, "INSERT INTO marks VALUES (100)")
		c.Exec(t, conn, "SELECT pg_switch_wal()")
		conn.Close(context.Background())
		switch mode {
		case "off":
			if am != "off" {
				t.Fatalf("--archive-mode off: archive_mode = %s", am)
			}
			time.Sleep(3 * time.Second)
			c.Stop(t) // a shutdown checkpoint, and nothing pushed on the way
			if after := repoWAL(t, a.r); strings.Join(after, " ") != strings.Join(before, " ") {
				t.Fatalf("the promoted test copy pushed into the repository:\nbefore %v\nafter  %v", before, after)
			}
		case "preserve":
			if am != "on" {
				t.Fatalf("--archive-mode preserve: archive_mode = %s", am)
			}
			pgtest.WaitFor(t, time.Minute, "the preserved archiver to push timeline 2", func() (bool, error) {
				for _, n := range repoWAL(t, a.r) {
					if strings.HasSuffix(n, "00000002.history") {
						return true, nil
					}
				}
				return false, nil
			})
			c.Stop(t)
		}
	}
}

package e2e

import (
	"bytes"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/pgtest"
)

// TestRecoveryStatus: `pgkeep recovery status`, started right after a
// restore and before PostgreSQL, logs a line every --interval (not a
// terminal) with the local WAL segments still to be replayed and, once
// PostgreSQL accepts connections, the replayed LSN; it returns 0 with
// "recovery finished" when the cluster has promoted, and the rows are
// exact.
func TestRecoveryStatus(t *testing.T) {
	a := newBulkArchive(t, 12)
	c, _ := restoreLatest(t, a, nil)
	env := append(append([]string{}, a.r.env...), "PGKEEP_POSTGRES_DSN="+c.DSN())
	cmd := pgkeepCommand(t, env, "recovery", "status", "--pgdata", c.DataDir, "--interval", "100ms", "--timeout", "3m")
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	time.Sleep(300 * time.Millisecond) // a few lines before PostgreSQL runs
	c.Start(t)
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("recovery status: %v\n%s%s", err, so.String(), se.String())
		}
	case <-time.After(3 * time.Minute):
		cmd.Process.Kill()
		t.Fatalf("recovery status did not return after recovery\n%s", se.String())
	}
	t.Logf("recovery status output:\n%s%s", pgtest.Tail(se.String(), 3000), so.String())
	if !strings.Contains(so.String(), "recovery finished: promoted") {
		t.Fatalf("no final line on stdout:\n%s", so.String())
	}
	most := 0
	for _, m := range regexp.MustCompile(`local_segments_left=(\d+)`).FindAllStringSubmatch(se.String(), -1) {
		n, _ := strconv.Atoi(m[1])
		most = max(most, n)
	}
	if most < 12 {
		t.Fatalf("no line showed the %d downloaded segments left before replay (most %d):\n%s", 12, most, se.String())
	}
	if !regexp.MustCompile(`state=promoted lsn=[0-9A-F]+/[0-9A-F]+`).MatchString(se.String()) {
		t.Fatalf("no line with the replayed LSN after promotion:\n%s", se.String())
	}
	if got := marks(t, c); got != a.allMarks {
		t.Fatalf("marks %s, want %s", got, a.allMarks)
	}
}

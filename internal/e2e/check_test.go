package e2e

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

var checkOK = regexp.MustCompile(`^ok: WAL segment ([0-9A-F]{24}) archived in [0-9.]+s\n$`)

// TestCheck: pgkeep check proves archiving end to end on a primary (the
// segment it switched to is then fetchable), names a failing
// archive_command, and on a standby checks what a standby can.
func TestCheck(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs", encrypted: true})
	primary := archivingCluster(t, r)
	env := backupEnv(r, primary)

	res := runPgkeep(t, env, "", "check")
	m := checkOK.FindStringSubmatch(res.stdout)
	if res.code != 0 || m == nil {
		t.Fatalf("check: exit %d, stdout %q, stderr %q", res.code, res.stdout, res.stderr)
	}
	// The segment it waited for is really in the repository.
	dir := walDir(t)
	if got := runPgkeep(t, r.env, dir, "wal-fetch", m[1], "pg_wal/"+m[1]); got.code != 0 {
		t.Fatalf("fetch the checked segment %s: exit %d %s", m[1], got.code, got.stderr)
	}
	// Twice in a row: the second switch has WAL to switch (a restore point).
	if res := runPgkeep(t, env, "", "check"); res.code != 0 || !checkOK.MatchString(res.stdout) || strings.Contains(res.stdout, m[1]) {
		t.Fatalf("second check: exit %d, stdout %q, stderr %q", res.code, res.stdout, res.stderr)
	}

	standby := streamingStandby(t, r, primary)
	waitReplayed(t, primary, standby)
	if res := runPgkeep(t, backupEnv(r, standby), "", "check"); res.code != 0 || !strings.HasPrefix(res.stdout, "ok: standby") {
		t.Fatalf("check on a standby: exit %d, stdout %q, stderr %q", res.code, res.stdout, res.stderr)
	}

	conn := primary.Conn(t)
	primary.Exec(t, conn, "ALTER SYSTEM SET archive_command = 'false'")
	primary.Exec(t, conn, "SELECT pg_reload_conf()")
	start := time.Now()
	res = runPgkeep(t, env, "", "check", "--timeout", "5s")
	lines := strings.Split(strings.TrimSpace(res.stderr), "\n")
	last := lines[len(lines)-1]
	if res.code == 0 || !strings.HasPrefix(last, "pgkeep: check: WAL segment") || !strings.Contains(last, "not archived within 5s: PostgreSQL's archiver is failing") {
		t.Fatalf("check with archive_command = 'false': exit %d, last line %q", res.code, last)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("check took %s with --timeout 5s", d)
	}
}

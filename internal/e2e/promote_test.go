package e2e

import (
	"bytes"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestStandbyPromotedMidBackup: a failover while a standby's backup runs.
// PostgreSQL refuses pg_backup_stop on a standby promoted since
// pg_backup_start (the copy mixes pages from before and after the switch);
// pgkeep must fail with that cause in one line, never list the backup as
// complete, let delete remove its debris, and back up the new primary.
func TestStandbyPromotedMidBackup(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs"})
	primary := archivingCluster(t, r)
	conn := primary.Conn(t)
	primary.Exec(t, conn, "CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text)")
	insertBatch(t, conn, 1)
	// Enough data that copying takes far longer than noticing it started.
	primary.Exec(t, conn, "CREATE TABLE bulk AS SELECT g AS id, repeat(md5(g::text), 8) AS h FROM generate_series(1, 600000) g")

	standby := streamingStandby(t, r, primary)
	waitReplayed(t, primary, standby)

	cmd := pgkeepCommand(t, backupEnv(r, standby), "backup")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	// The start record is written right after pg_backup_start returns:
	// freeze the backup there, between start and stop.
	deadline := time.Now().Add(time.Minute)
	for {
		if m, _ := filepath.Glob(filepath.Join(r.repoDir, "backups", "*", "started.json")); len(m) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backup did not start: %s", stderr.String())
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}

	// Failover: the primary dies, the standby is promoted.
	primary.Stop(t)
	promote(t, standby)

	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("backup across a promotion: %v (the backup must fail)\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	msg := strings.TrimSpace(stderr.String())
	if lines := strings.Split(msg, "\n"); !strings.HasPrefix(lines[len(lines)-1], "pgkeep: backup: stop") ||
		!strings.Contains(lines[len(lines)-1], "standby was promoted during online backup") {
		t.Fatalf("error does not say the standby was promoted: %q", msg)
	}
	if out := strings.TrimSpace(stdout.String()); out != "" {
		t.Fatalf("failed backup printed an ID: %q", out)
	}
	rows := listBackups(t, r)
	if len(rows) != 1 || rows[0].Status == "complete" {
		t.Fatalf("after the failed backup: %+v", rows)
	}
	del := r.run(t, "delete", "--retain-full", "1", "--debris-min-age", "0s")
	if del.code != 0 || !strings.Contains(del.stdout, "deleted incomplete backup "+rows[0].ID) {
		t.Fatalf("delete of the debris: %q %q", del.stdout, del.stderr)
	}
	if rows := listBackups(t, r); len(rows) != 0 {
		t.Fatalf("after delete: %+v", rows)
	}

	// The promoted standby is the primary now (timeline 2): its backup works.
	id := takeBackup(t, r, standby)
	rows = listBackups(t, r)
	if len(rows) != 1 || rows[0].ID != id || rows[0].Status != "complete" || rows[0].Role != "primary" || rows[0].Tl != 2 {
		t.Fatalf("backup of the new primary: %+v", rows)
	}
}

package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/restore"
)

// Only the repository's answer may read as "no such file" (< 126) in
// archive recovery; standby mode never gets a status that stops PostgreSQL.
func TestWALFetchExitCode(t *testing.T) {
	cases := []struct {
		o    restore.Outcome
		mode restore.RecoveryMode
		want int
	}{
		{restore.Fetched, restore.ModeArchiveRecovery, 0},
		{restore.Missing, restore.ModeArchiveRecovery, 1},
		{restore.Missing, restore.ModeStandby, 1},
		{restore.Missing, restore.ModeUnknown, 1},
		{restore.Unavailable, restore.ModeArchiveRecovery, 255},
		{restore.Failed, restore.ModeArchiveRecovery, 255},
		{restore.Unavailable, restore.ModeUnknown, 255},
		{restore.Failed, restore.ModeUnknown, 255},
		{restore.Unavailable, restore.ModeStandby, 2},
		{restore.Failed, restore.ModeStandby, 2},
	}
	for _, c := range cases {
		got := walFetchExitCode(c.o, c.mode)
		if got != c.want {
			t.Errorf("outcome %d in %s: exit %d, want %d", c.o, c.mode, got, c.want)
		}
		if c.o != restore.Missing && c.o != restore.Fetched && c.mode != restore.ModeStandby && got < 126 {
			t.Errorf("outcome %d in %s: exit %d reads as 'no such file' to PostgreSQL", c.o, c.mode, got)
		}
		if c.mode == restore.ModeStandby && got >= 126 {
			t.Errorf("standby: exit %d would stop the standby", got)
		}
	}
}

func TestFetchRetryTimeConfig(t *testing.T) {
	cfg, err := LoadConfig("/nonexistent", false, []string{"PGKEEP_WAL_FETCH_RETRY_TIME=3s"})
	if err != nil || cfg.WAL.FetchRetryTime != 3*time.Second {
		t.Fatalf("PGKEEP_WAL_FETCH_RETRY_TIME=3s: %v %v", cfg.WAL.FetchRetryTime, err)
	}
	if _, err := LoadConfig("/nonexistent", false, []string{"PGKEEP_WAL_FETCH_RETRY_TIME=-5m"}); err == nil {
		t.Fatal("negative retry time accepted")
	}
	if cfg, _ := LoadConfig("/nonexistent", false, nil); cfg.WAL.FetchRetryTime != 5*time.Minute {
		t.Fatalf("default retry time %s", cfg.WAL.FetchRetryTime)
	}
}

// restore_command names the config that was read, by absolute path, however
// it was found; PGKEEP_* settings are not carried.
func TestRestoreCommandConfig(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	if err := os.WriteFile("it's here.yml", []byte("repository: file:///srv/r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGKEEP_CONFIG", "it's here.yml")
	t.Setenv("PGKEEP_WAL_PREFETCH", "3")
	a := &app{}
	if err := a.load(); err != nil {
		t.Fatal(err)
	}
	got := a.restoreCommand()
	want := " --config '" + filepath.Join(dir, "it'\\''s here.yml") + "' wal-fetch %f %p"
	if !strings.HasSuffix(got, want) {
		t.Fatalf("restore_command %q, want suffix %q", got, want)
	}
	if !reflect.DeepEqual(a.cfg.fromEnv, []string{"PGKEEP_WAL_PREFETCH"}) {
		t.Fatalf("fromEnv %v", a.cfg.fromEnv)
	}
}

// The one table: every error kind a command returns maps to its
// documented code (docs/wal.md, "Exit codes"), and only "missing" is quiet.
func TestExitCode(t *testing.T) {
	standby := t.TempDir()
	if err := os.MkdirAll(filepath.Join(standby, "pg_wal"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(standby, "standby.signal"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	recovery := t.TempDir()
	os.MkdirAll(filepath.Join(recovery, "pg_wal"), 0o700)
	os.WriteFile(filepath.Join(recovery, "recovery.signal"), nil, 0o600)
	cases := []struct {
		name  string
		err   error
		code  int
		quiet bool
	}{
		{"failure", errors.New("backup: boom"), exitFailed, false},
		{"config", fmt.Errorf("wrapped: %w", &configError{"config x: bad"}), exitConfig, false},
		{"usage", errors.New(`unknown flag: --nope`), exitConfig, false},
		{"missing", restore.FailFetch(filepath.Join(recovery, "pg_wal", "RECOVERYXLOG"), restore.ErrWALNotFound), exitMissing, true},
		{"missing in standby", restore.FailFetch(filepath.Join(standby, "pg_wal", "RECOVERYXLOG"), restore.ErrWALNotFound), exitMissing, true},
		{"failed in recovery", restore.FailFetch(filepath.Join(recovery, "pg_wal", "RECOVERYXLOG"), errors.New("wrong key")), exitStopRecovery, false},
		{"config in recovery", restore.FailFetch(filepath.Join(recovery, "pg_wal", "RECOVERYXLOG"), &configError{"bad"}), exitStopRecovery, false},
		{"failed in standby", restore.FailFetch(filepath.Join(standby, "pg_wal", "RECOVERYXLOG"), errors.New("wrong key")), exitStandbyRetry, false},
	}
	for _, c := range cases {
		code, quiet := exitCode(c.err)
		if code != c.code || quiet != c.quiet {
			t.Errorf("%s: exit %d quiet %v, want %d %v", c.name, code, quiet, c.code, c.quiet)
		}
	}
}

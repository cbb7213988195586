package main

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// An unknown PGKEEP_* variable is one warning per process, naming the
// variable (and the likely intended one), never its value; the command
// goes on.
func TestUnknownEnvWarnsOnce(t *testing.T) {
	cfg, err := LoadConfig("/nonexistent", false, []string{"PGKEEP_COMPRESION_LEVEL=7", "PGKEEP_WAL_PREFETCH=2"})
	if err != nil {
		t.Fatalf("unknown variable failed the load: %v", err)
	}
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	warnUnknownEnv(cfg, log)
	out := buf.String()
	if strings.Count(out, "\n") != 1 || !strings.Contains(out, "level=WARN") ||
		!strings.Contains(out, "variable=PGKEEP_COMPRESION_LEVEL") || !strings.Contains(out, "did_you_mean=PGKEEP_COMPRESSION_LEVEL") ||
		strings.Contains(out, "=7") {
		t.Fatalf("warning: %q", out)
	}
	if cfg.WAL.Prefetch != 2 || cfg.Compression.Level != 1 {
		t.Fatalf("known variable not applied, or unknown one applied: %+v", cfg)
	}
	// A misspelt key in the file stays an error.
	p := filepath.Join(t.TempDir(), "c.yml")
	os.WriteFile(p, []byte("compresion:\n  level: 7\n"), 0o600)
	if _, err := LoadConfig(p, true, nil); err == nil || !strings.Contains(err.Error(), `unknown key "compresion"`) {
		t.Fatalf("misspelt file key: %v", err)
	}
}

// daemon.jobs is settable by environment as a YAML list, checked like the
// file's (unknown keys, whole numbers, validation).
func TestDaemonJobsFromEnv(t *testing.T) {
	cfg, err := LoadConfig("/nonexistent", false, []string{
		`PGKEEP_DAEMON_JOBS=[{name: nightly, kind: backup, schedule: "0 0 1 * * *", run_on: prefer-replica, max_lag: 64MB}, {name: keep, kind: retention, schedule: "@daily", run_on: primary, retain_full: 7}]`,
		"PGKEEP_DAEMON_TIMEZONE=Europe/Paris",
	})
	if err != nil {
		t.Fatal(err)
	}
	j := cfg.Daemon.Jobs
	if len(j) != 2 || j[0].Name != "nightly" || j[0].MaxLag != "64MB" || j[1].RetainFull != 7 || cfg.Daemon.Timezone != "Europe/Paris" {
		t.Fatalf("jobs %+v", j)
	}
	for env, want := range map[string]string{
		`PGKEEP_DAEMON_JOBS=[{name: a, kind: backup, schedul: "@daily", run_on: primary}]`:                       `unknown job key "schedul"`,
		`PGKEEP_DAEMON_JOBS=[{name: a, kind: retention, schedule: "@daily", run_on: primary, retain_full: 1.5}]`: "retain_full",
		`PGKEEP_DAEMON_JOBS=[{name: a, kind: backup, schedule: "@daily", run_on: leader}]`:                       "daemon.jobs[a].run_on",
		`PGKEEP_DAEMON_JOBS={name: a`: "PGKEEP_DAEMON_JOBS",
	} {
		if _, err := LoadConfig("/nonexistent", false, []string{env}); err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want one line with %q", env, err, want)
		}
	}
}

// Every key is settable by environment: each leaf of Config has a
// PGKEEP_* variable that setField accepts.
func TestEveryKeySettableByEnv(t *testing.T) {
	for _, s := range configSettings(defaultConfig()) {
		env := "PGKEEP_" + strings.ToUpper(strings.ReplaceAll(s.Key, ".", "_"))
		cfg := defaultConfig()
		if err := applyEnv(&cfg, []string{env + "=" + sampleValue(s.Key)}); err != nil {
			t.Errorf("%s: %v", env, err)
			continue
		}
		if len(cfg.unknownEnv) != 0 || len(cfg.fromEnv) != 1 {
			t.Errorf("%s is not the variable of %s", env, s.Key)
		}
	}
}

func sampleValue(key string) string {
	switch {
	case key == "daemon.jobs":
		return `[{name: a, kind: verify, schedule: "@daily", run_on: primary}]`
	case strings.HasSuffix(key, "timeout") || strings.HasSuffix(key, "_ttl") || strings.HasSuffix(key, "_interval") || strings.HasSuffix(key, "_delay") || strings.HasSuffix(key, "_time") || strings.HasSuffix(key, "_stagger"):
		return "3s"
	case key == "s3.path_style", key == "wal.block_maps":
		return "true"
	case strings.HasSuffix(key, "level") && !strings.HasPrefix(key, "log."), strings.HasSuffix(key, "concurrency"), strings.HasSuffix(key, "attempts"),
		strings.HasSuffix(key, "_mb"), strings.HasPrefix(key, "wal.p"), key == "daemon.retries",
		strings.HasSuffix(key, "_bytes"), strings.HasPrefix(key, "retention."), strings.HasSuffix(key, "rate_limit"):
		return "5"
	}
	return "x"
}

// config show: every key once, with its source; env wins over the file;
// credentials in the DSN and URLs are redacted and secret files are named,
// never read.
func TestConfigShow(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "passphrase")
	os.WriteFile(secret, []byte("correct horse battery staple\n"), 0o600)
	p := filepath.Join(dir, "pgkeep.yml")
	os.WriteFile(p, []byte(`repository: s3://bucket/prefix
s3:
  endpoint: http://minio:minio-secret@127.0.0.1:9000
encryption:
  passphrase_file: `+secret+`
postgres:
  dsn: "host=127.0.0.1 user=postgres password='pw in dsn'"
wal:
  prefetch: 4
daemon:
  jobs:
    - {name: nightly, kind: backup, schedule: "@daily", run_on: primary}
`), 0o600)
	cfg, err := LoadConfig(p, true, []string{"PGKEEP_WAL_PREFETCH=6", "PGKEEP_LOG_LEVEL=debug", "PGKEEP_TYPO=1"})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := printConfig(&buf, cfg, p); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, leak := range []string{"correct horse", "minio-secret", "pw in dsn"} {
		if strings.Contains(out, leak) {
			t.Fatalf("config show leaks %q:\n%s", leak, out)
		}
	}
	rows := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(line, "#") || strings.HasPrefix(line, "KEY") {
			continue
		}
		f := regexp.MustCompile(`\s{2,}`).Split(line, -1)
		if _, dup := rows[f[0]]; dup {
			t.Fatalf("key %s twice", f[0])
		}
		rows[f[0]] = f[1:]
	}
	if len(rows) != len(configSettings(defaultConfig())) {
		t.Fatalf("%d rows, want every key:\n%s", len(rows), out)
	}
	want := map[string][2]string{
		"repository":                 {"s3://bucket/prefix", "file"},
		"s3.endpoint":                {"http://REDACTED@127.0.0.1:9000", "file"},
		"encryption.passphrase_file": {secret, "file"},
		"postgres.dsn":               {`"host=127.0.0.1 user=postgres password=REDACTED"`, "file"},
		"wal.prefetch":               {"6", "env PGKEEP_WAL_PREFETCH"},
		"log.level":                  {"debug", "env PGKEEP_LOG_LEVEL"},
		"wal.push_ahead":             {"8", "default"},
		"s3.timeout":                 {time.Minute.String(), "default"},
		"daemon.jobs":                {`[{name: nightly, kind: backup, schedule: "@daily", run_on: primary}]`, "file"},
	}
	for k, w := range want {
		if got := rows[k]; len(got) != 2 || got[0] != w[0] || got[1] != w[1] {
			t.Errorf("%s: %q, want %q", k, got, w)
		}
	}
	if !strings.Contains(out, "# config file: "+p) || !strings.Contains(out, "# ignored: PGKEEP_TYPO is not a pgkeep setting") {
		t.Fatalf("header:\n%s", out)
	}
}

func TestRedactDSN(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://u:pw@h:5432/db?sslmode=require": "postgres://u:REDACTED@h:5432/db?sslmode=require",
		"postgresql://u@h/db?password=pw":           "postgresql://u@h/db?password=REDACTED",
		"host=h password=pw user=u":                 "host=h password=REDACTED user=u",
		`host=h password = 'p w\' x' user=u`:        "host=h password = REDACTED user=u",
		"host=h user=u":                             "host=h user=u",
	} {
		if got := redactDSN(in); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

// config check: missing or unopenable files named by the config are
// configuration errors (exit 2), named by key and path.
func TestConfigCheckFiles(t *testing.T) {
	dir := t.TempDir()
	id := filepath.Join(dir, "identity.txt")
	os.WriteFile(id, []byte("AGE-SECRET-KEY-1XXXX\n"), 0o600)
	cfg := defaultConfig()
	cfg.Encryption.IdentityFile = id
	cfg.PGData = dir
	if err := checkConfigFiles(cfg); err != nil {
		t.Fatal(err)
	}
	cfg.Etcd.PasswordFile = filepath.Join(dir, "etcd.pw")
	err := checkConfigFiles(cfg)
	var ce *configError
	if err == nil || !strings.Contains(err.Error(), "etcd.password_file "+cfg.Etcd.PasswordFile+": no such file or directory") || !errors.As(err, &ce) {
		t.Fatalf("missing password file: %v", err)
	}
	cfg.Etcd.PasswordFile = ""
	cfg.PGData = id
	if err := checkConfigFiles(cfg); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("pgdata a file: %v", err)
	}
}

// The commands end to end through run(): exit codes and output.
func TestConfigCommands(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "pgkeep.yml")
	os.WriteFile(p, []byte("repository: file:///var/lib/pgkeep/repo\nencryption:\n  identity_file: "+filepath.Join(dir, "missing.txt")+"\n"), 0o600)
	t.Setenv("PGKEEP_CONFIG", p)
	if code := run(t.Context(), []string{"config", "check"}); code != exitConfig {
		t.Fatalf("config check with a missing identity file: exit %d, want 2", code)
	}
	os.WriteFile(p, []byte("repository: file:///var/lib/pgkeep/repo\n"), 0o600)
	if code := run(t.Context(), []string{"config", "check"}); code != exitOK {
		t.Fatalf("config check: exit %d", code)
	}
	t.Setenv("PGKEEP_NOT_A_SETTING", "1")
	if code := run(t.Context(), []string{"config", "show"}); code != exitOK {
		t.Fatalf("config show with a stray variable: exit %d", code)
	}
	os.WriteFile(p, []byte("repositry: file:///x\n"), 0o600)
	if code := run(t.Context(), []string{"config", "check"}); code != exitConfig {
		t.Fatalf("config check of a misspelt key: exit %d, want 2", code)
	}
}

package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The example file documents every key with its default value.
func TestExampleConfigIsCompleteAndDefault(t *testing.T) {
	cfg, err := LoadConfig("../../configs/pgkeep.yml", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.source, cfg.file, cfg.fileKeys = "", "", nil
	if !reflect.DeepEqual(cfg, defaultConfig()) {
		// recipients: [] and endpoints: [] decode to empty, non-nil slices.
		cfg.Encryption.Recipients = nil
		cfg.Etcd.Endpoints = nil
		cfg.Daemon.Jobs = nil
		if !reflect.DeepEqual(cfg, defaultConfig()) {
			t.Fatalf("configs/pgkeep.yml differs from the defaults:\n%+v\n%+v", cfg, defaultConfig())
		}
	}
	data, _ := os.ReadFile("../../configs/pgkeep.yml")
	fields := map[string]envField{}
	c := defaultConfig()
	envFields(reflect.ValueOf(&c).Elem(), "PGKEEP", "", fields)
	for _, f := range fields {
		leaf := f.key[strings.LastIndex(f.key, ".")+1:]
		if !strings.Contains(string(data), "\n"+strings.Repeat(" ", 2*strings.Count(f.key, "."))+leaf+":") {
			t.Errorf("configs/pgkeep.yml does not document %s", f.key)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "c.yml")
		os.WriteFile(p, []byte(s), 0o600)
		return p
	}
	cases := map[string]string{
		"s3:\n  endpont: x\n":                                     `unknown key "endpont" at line 2`,
		"compression:\n  level: 99\n":                             "compression.level",
		"repository: ftp://x\n":                                   "repository",
		"upload_concurrency: 0\n":                                 "upload_concurrency",
		"wal:\n  fetch_retry_time: -1s\n":                         "wal.fetch_retry_time",
		"wal:\n  fetch_retry_time: 48h\n":                         "wal.fetch_retry_time",
		"s3: [\n":                                                 "c.yml",
		"log:\n  level: loud\n":                                   "log.level",
		"etcd:\n  endpoints: [127.0.0.1:2379]\n":                  "patroni.scope",
		"etcd:\n  dial_timeout: 0s\n":                             "etcd.dial_timeout",
		"etcd:\n  cert: /c\n":                                     "cert and key",
		"etcd:\n  username: root\n":                               "password_file",
		"etcd:\n  password: x\n":                                  `unknown key "password"`,
		"etcd:\n  endpoints: [ftp://h:1]\npatroni:\n  scope: s\n": "etcd.endpoints[0]",
		"patroni:\n  scope: a/b\n":                                "patroni.scope",
		"daemon:\n  timezone: Mars/Olympus\n":                     "daemon.timezone",
		"daemon:\n  lock_ttl: 1s\n":                               "daemon.lock_ttl",
		"daemon:\n  listen: nope\n":                               "daemon.listen",
		"daemon:\n  jobs: [{name: a, kind: backup, schedule: '* * *', run_on: primary}]\n":                 "daemon.jobs[a].schedule",
		"daemon:\n  jobs: [{name: a, kind: backup, schedule: '@daily', run_on: leader}]\n":                 "daemon.jobs[a].run_on",
		"daemon:\n  jobs: [{name: a, kind: retention, schedule: '@daily', run_on: primary}]\n":             "retain_full or retain_days",
		"daemon:\n  jobs: [{name: a, kind: backup, schedule: '@daily', run_on: replica, max_lag: lots}]\n": "daemon.jobs[a].max_lag",
		"daemon:\n  jobs: [{name: a, kind: snapshot, schedule: '@daily', run_on: replica}]\n":              "daemon.jobs[a].kind",
		"daemon:\n  jobs: [{name: a, kind: backup, schedule: '@daily', run_on: replica, nope: 1}]\n":       `unknown key "nope"`,
	}
	for content, want := range cases {
		_, err := LoadConfig(write(content), true, nil)
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: got %v, want one line mentioning %q", content, err, want)
		}
	}
	if _, err := LoadConfig(filepath.Join(dir, "missing.yml"), false, nil); err != nil {
		t.Errorf("missing default config should mean defaults: %v", err)
	}
	if _, err := LoadConfig(filepath.Join(dir, "missing.yml"), true, nil); err == nil {
		t.Error("missing explicit config accepted")
	}
}

func TestEnvOverrides(t *testing.T) {
	env := []string{
		"PGKEEP_REPOSITORY=s3://b/p",
		"PGKEEP_S3_PATH_STYLE=true",
		"PGKEEP_S3_TIMEOUT=7s",
		"PGKEEP_ENCRYPTION_IDENTITY_FILE=/k",
		"PGKEEP_ENCRYPTION_RECIPIENTS=age1a, age1b",
		"PGKEEP_UPLOAD_CONCURRENCY=9",
		"PGKEEP_CONFIG=/ignored",
		"OTHER=1",
	}
	cfg, err := LoadConfig("/nonexistent", false, env)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Repository != "s3://b/p" || !cfg.S3.PathStyle || cfg.S3.Timeout != 7*time.Second ||
		cfg.Encryption.IdentityFile != "/k" || cfg.UploadConcurrency != 9 ||
		!reflect.DeepEqual(cfg.Encryption.Recipients, []string{"age1a", "age1b"}) {
		t.Fatalf("overrides not applied: %+v", cfg)
	}
	cfg, err = LoadConfig("/nonexistent", false, []string{
		"PGKEEP_ETCD_ENDPOINTS=https://127.0.0.1:2379, https://127.0.0.2:2379",
		"PGKEEP_ETCD_DIAL_TIMEOUT=2s",
		"PGKEEP_ETCD_USERNAME=pgkeep",
		"PGKEEP_ETCD_PASSWORD_FILE=/etc/pgkeep/etcd.pw",
		"PGKEEP_PATRONI_SCOPE=main",
		"PGKEEP_PATRONI_NAMESPACE=/pg/",
	})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg.Etcd.Endpoints, []string{"https://127.0.0.1:2379", "https://127.0.0.2:2379"}) ||
		cfg.Etcd.DialTimeout != 2*time.Second || cfg.Etcd.Username != "pgkeep" ||
		cfg.Etcd.PasswordFile != "/etc/pgkeep/etcd.pw" || cfg.Patroni.Scope != "main" || cfg.Patroni.Namespace != "/pg/" {
		t.Fatalf("etcd overrides not applied: %+v %+v", cfg.Etcd, cfg.Patroni)
	}
	// There is deliberately no way to pass the password itself: the
	// variable is ignored (with a warning naming it, never its value).
	cfg, err = LoadConfig("/nonexistent", false, []string{"PGKEEP_ETCD_PASSWORD=secret"})
	if err != nil || !reflect.DeepEqual(cfg.unknownEnv, []string{"PGKEEP_ETCD_PASSWORD"}) || cfg.Etcd.PasswordFile != "" {
		t.Fatalf("PGKEEP_ETCD_PASSWORD: %v %v", err, cfg.unknownEnv)
	}
	// Credentials in an endpoint are refused without being echoed.
	_, err = LoadConfig("/nonexistent", false, []string{"PGKEEP_ETCD_ENDPOINTS=http://root:hunter2@127.0.0.1:2379", "PGKEEP_PATRONI_SCOPE=main"})
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("endpoint with credentials: %v", err)
	}
	_, err = LoadConfig("/nonexistent", false, []string{"PGKEEP_UPLOAD_CONCURRENCY=lots"})
	if err == nil || !strings.Contains(err.Error(), "PGKEEP_UPLOAD_CONCURRENCY") {
		t.Fatalf("bad env value: %v", err)
	}
	cfg, err = LoadConfig("/nonexistent", false, []string{"PGKEEP_NOPE=1", "PGKEEP_WAL_PREFETCH=3"})
	if err != nil || !reflect.DeepEqual(cfg.unknownEnv, []string{"PGKEEP_NOPE"}) || cfg.WAL.Prefetch != 3 {
		t.Fatalf("unknown env: %v %v", err, cfg.unknownEnv)
	}
}

// "No repository here" names the settings used: a hook that runs without
// the shell's PGKEEP_CONFIG reads the default file, or none.
func TestMissingRepositoryNamesSettings(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "none.yml")
	cfg, err := LoadConfig(missing, false, []string{"PGKEEP_REPOSITORY=file://" + filepath.Join(dir, "repo")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = openRepo(t.Context(), cfg)
	if err == nil || !strings.Contains(err.Error(), "pgkeep repo init") ||
		!strings.Contains(err.Error(), "no config file at "+missing+", so only defaults and PGKEEP_* variables apply") {
		t.Fatalf("missing repository: %v", err)
	}

	file := filepath.Join(dir, "pgkeep.yml")
	os.Mkdir(filepath.Join(dir, "empty"), 0o700)
	os.WriteFile(file, []byte("repository: file://"+filepath.Join(dir, "empty")+"\n"), 0o600)
	cfg, err = LoadConfig(file, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = openRepo(t.Context(), cfg)
	if err == nil || !strings.Contains(err.Error(), "not initialized") || !strings.Contains(err.Error(), "settings from "+file) {
		t.Fatalf("uninitialized repository: %v", err)
	}
}

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzLoadConfig: any pgkeep.yml gives a config that validates or a
// one-line error; an accepted config stays valid.
func FuzzLoadConfig(f *testing.F) {
	example, err := os.ReadFile("../../configs/pgkeep.yml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	f.Add([]byte("repository: s3://backups/prod\ns3:\n  endpoint: http://127.0.0.1:9000\n  path_style: true\nencryption:\n  recipients: [age1qqq]\n"))
	f.Add([]byte("wal:\n  prefetch: 1.5\n"))
	f.Add([]byte("daemon:\n  jobs:\n    - {name: nightly, kind: backup, schedule: '0 1 * * *'}\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(dir, "pgkeep.yml")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := LoadConfig(p, true, nil)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error: %q", err)
			}
			return
		}
		if err := cfg.validate(p); err != nil {
			t.Fatalf("accepted config does not validate: %v", err)
		}
	})
}

// FuzzEnvConfig: a PGKEEP_* variable is applied or refused in one line
// that never echoes the value (it may be a secret).
func FuzzEnvConfig(f *testing.F) {
	f.Add("PGKEEP_REPOSITORY", "s3://backups/prod")
	f.Add("PGKEEP_WAL_PREFETCH", "1.5")
	f.Add("PGKEEP_S3_TIMEOUT", "forever-and-a-day")
	f.Add("PGKEEP_ETCD_ENDPOINTS", "https://10.0.0.1:2379,https://10.0.0.2:2379")
	f.Add("PGKEEP_NO_SUCH_KEY", "secret-value-123")
	f.Add("PGKEEP_S3_PATH_STYLE", "maybe-secret-xyz")
	missing := filepath.Join(f.TempDir(), "none.yml")
	f.Fuzz(func(t *testing.T, name, value string) {
		if strings.ContainsAny(name, "=\x00") || strings.ContainsRune(value, 0) {
			return
		}
		_, err := LoadConfig(missing, false, []string{name + "=" + value})
		if err == nil {
			return
		}
		msg := err.Error()
		if strings.Contains(msg, "\n") {
			t.Fatalf("multi-line error: %q", msg)
		}
		if strings.HasPrefix(msg, "environment variable") && len(value) >= 8 && !strings.Contains(name, value) && strings.Contains(msg, value) {
			t.Fatalf("error echoes the value: %q", msg)
		}
	})
}

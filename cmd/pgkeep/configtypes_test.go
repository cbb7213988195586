package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Values the YAML decoder would convert silently, and repository URLs that
// cannot be opened, are configuration errors (exit 2).
func TestConfigRefusesLossyValues(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ yaml, want string }{
		{"wal:\n  prefetch: 1.5\n", `wal.prefetch: "1.5" is not a whole number`},
		{"upload_concurrency: 2e3\n", `upload_concurrency: "2e3" is not a whole number`},
		{"repository: s3://\n", "s3 URLs name a bucket"},
		{"repository: file://relative/dir\n", "absolute path"},
		{"repository: file:relative\n", "absolute path"},
		{"repository: gs://bucket\n", "is not a file:///path or s3://bucket/prefix URL"},
	} {
		p := filepath.Join(dir, "pgkeep.yml")
		os.WriteFile(p, []byte(c.yaml), 0o600)
		_, err := LoadConfig(p, true, nil)
		var ce *configError
		if err == nil || !strings.Contains(err.Error(), c.want) || !asConfigError(err, &ce) {
			t.Errorf("%q: %v, want a config error with %q", c.yaml, err, c.want)
		}
	}
	p := filepath.Join(dir, "ok.yml")
	os.WriteFile(p, []byte("wal:\n  prefetch: 4\ns3:\n  timeout: 1.5s\n"), 0o600)
	if cfg, err := LoadConfig(p, true, nil); err != nil || cfg.WAL.Prefetch != 4 {
		t.Fatalf("valid config: %+v %v", cfg.WAL, err)
	}
}

func asConfigError(err error, ce **configError) bool {
	e, ok := err.(*configError)
	*ce = e
	return ok
}

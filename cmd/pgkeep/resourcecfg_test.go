package main

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestResourceAndRetentionKeys: backup.concurrency (default GOMAXPROCS+1),
// storage.rate_limit and retention.full/days parse, and bad values are
// refused with the key named.
func TestResourceAndRetentionKeys(t *testing.T) {
	dir := t.TempDir()
	load := func(s string) (Config, error) {
		p := filepath.Join(dir, "c.yml")
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return LoadConfig(p, true, nil)
	}
	cfg, err := load("")
	if err != nil {
		t.Fatal(err)
	}
	if got := backupWorkers(cfg); got != runtime.GOMAXPROCS(0)+1 {
		t.Errorf("default backup workers %d, want GOMAXPROCS+1 = %d", got, runtime.GOMAXPROCS(0)+1)
	}
	if cfg.Storage.RateLimitBytes() != 0 || cfg.Retention != (RetentionConfig{}) {
		t.Errorf("defaults: %+v %+v", cfg.Storage, cfg.Retention)
	}
	cfg, err = load("backup:\n  concurrency: 3\nstorage:\n  rate_limit: 20MB\nretention:\n  full: 7\n")
	if err != nil {
		t.Fatal(err)
	}
	if backupWorkers(cfg) != 3 || cfg.Storage.RateLimitBytes() != 20<<20 || cfg.Retention.Full != 7 {
		t.Errorf("got %d workers, %d B/s, %+v", backupWorkers(cfg), cfg.Storage.RateLimitBytes(), cfg.Retention)
	}
	cfg, err = load("retention:\n  days: 14\n")
	if err != nil || cfg.Retention.Days != 14 {
		t.Errorf("retention.days: %+v, %v", cfg.Retention, err)
	}
	for content, want := range map[string]string{
		"backup:\n  concurrency: -1\n":       "backup.concurrency",
		"backup:\n  concurrency: 1000\n":     "backup.concurrency",
		"storage:\n  rate_limit: fast\n":     "storage.rate_limit",
		"storage:\n  rate_limit: 100\n":      "storage.rate_limit",
		"retention:\n  full: 3\n  days: 7\n": "retention",
		"retention:\n  full: -1\n":           "retention",
		"retention:\n  days: 100000\n":       "retention",
		"backup:\n  concurency: 2\n":         `unknown key "concurency"`,
	} {
		_, err := load(content)
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: got %v, want one line naming %q", content, err, want)
		}
	}
}

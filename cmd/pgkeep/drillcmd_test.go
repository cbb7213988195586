package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgkeep/pgkeep/restore"
)

// Drill jobs' keys are checked at config load and become drill options.
func TestDrillJobConfig(t *testing.T) {
	dir := t.TempDir()
	load := func(job string) (Config, error) {
		p := filepath.Join(dir, "pgkeep.yml")
		os.WriteFile(p, []byte("daemon:\n  ha: none\n  lock_dir: /var/lib/pgkeep/daemon\n  jobs:\n    - "+job+"\n"), 0o600)
		return LoadConfig(p, true, nil)
	}
	cfg, err := load(`{name: d, kind: drill, schedule: "@weekly", scratch_dir: /srv/drill, max_bytes: 2GB, target: immediate, amcheck_tables: -1, sql: "SELECT true"}`)
	if err != nil {
		t.Fatal(err)
	}
	o, err := drillJobOptions(cfg.Daemon.Jobs[0])
	if err != nil {
		t.Fatal(err)
	}
	if o.ScratchDir != "/srv/drill" || o.MaxBytes != 2<<30 || o.Target.Kind != restore.TargetImmediate || o.AmcheckRelations != -1 || o.SQL != "SELECT true" {
		t.Errorf("drill options: %+v", o)
	}
	for job, want := range map[string]string{
		`{name: d, kind: drill, schedule: "@weekly", scratch_dir: drill}`:                                    "scratch_dir",
		`{name: d, kind: drill, schedule: "@weekly", max_bytes: lots}`:                                       "max_bytes",
		`{name: d, kind: drill, schedule: "@weekly", target: latest}`:                                        "target",
		`{name: d, kind: drill, schedule: "@weekly", target_time: yesterday}`:                                "target time",
		`{name: d, kind: drill, schedule: "@weekly", target: immediate, target_lsn: 0/1}`:                    "at most one",
		`{name: d, kind: drill, schedule: "@weekly", amcheck_tables: 1000000}`:                               "amcheck",
		`{name: d, kind: drill, schedule: "@weekly", retain_full: 2}`:                                        "retention",
		`{name: d, kind: backup, schedule: "@weekly"}`:                                                       "",
		`{name: d, kind: drill, schedule: "@weekly", target_time: "2026-11-22T18:04:05Z", target_name: "x"}`: "at most one",
	} {
		_, err := load(job)
		switch {
		case want == "" && err != nil:
			t.Errorf("%s: %v", job, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "daemon.jobs[d]")):
			t.Errorf("%s: %v, want an error about %s", job, err, want)
		}
	}
}

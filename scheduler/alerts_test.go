package scheduler_test

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/pgkeep/pgkeep/scheduler"
)

// The example alert rules only use metrics the daemon exports, with the
// labels it sets, so a renamed metric cannot silently disarm an alert.
func TestAlertRulesUseExportedMetrics(t *testing.T) {
	data, err := os.ReadFile("../configs/prometheus-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("configs/prometheus-alerts.yml: %v", err)
	}
	known := map[string]bool{}
	for _, m := range []string{scheduler.MetricLastSuccess, scheduler.MetricDuration, scheduler.MetricBytes, scheduler.MetricRuns,
		scheduler.MetricHeld, scheduler.MetricEtcdUp, scheduler.MetricArchiveLag, scheduler.MetricArchiveFailed} {
		known[m] = true
	}
	names := regexp.MustCompile(`pgkeep_[a-z_]+`)
	wanted := map[string]bool{"PgkeepNoRecentBackup": false, "PgkeepArchiveFailing": false, "PgkeepArchiveLag": false}
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			if _, ok := wanted[r.Alert]; ok {
				wanted[r.Alert] = true
			}
			if r.Expr == "" {
				t.Errorf("alert %s has no expr", r.Alert)
			}
			for _, n := range names.FindAllString(r.Expr, -1) {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_count"), "_sum"), "_bucket")
				if !known[n] && !known[base] {
					t.Errorf("alert %s uses %s, which the daemon does not export", r.Alert, n)
				}
			}
			if strings.Contains(r.Expr, `{job=`) {
				t.Errorf("alert %s selects on job=, but pgkeep's label is job_name (job is the scrape job)", r.Alert)
			}
		}
	}
	for a, seen := range wanted {
		if !seen {
			t.Errorf("alert %s missing", a)
		}
	}
}

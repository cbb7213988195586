package daemon_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/pgkeep/pgkeep/daemon"
	"github.com/pgkeep/pgkeep/scheduler"
)

const alertsFile = "../configs/prometheus-alerts.yml"

// exported is every metric name the daemon exports.
func exported() map[string]bool {
	known := map[string]bool{}
	for _, m := range []string{scheduler.MetricLastSuccess, scheduler.MetricLastFailure, scheduler.MetricDuration, scheduler.MetricBytes,
		scheduler.MetricRuns, scheduler.MetricHeld, scheduler.MetricEtcdUp, scheduler.MetricClockOffset,
		scheduler.MetricDrillLast, scheduler.MetricDrillQuery} {
		known[m] = true
	}
	for _, m := range daemon.MetricNames() {
		known[m] = true
	}
	return known
}

// usesExported reports the pgkeep_ names of expr the daemon does not export.
func usesUnknown(expr string, known map[string]bool) []string {
	var bad []string
	for _, n := range regexp.MustCompile(`pgkeep_[a-z_]+`).FindAllString(expr, -1) {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_count"), "_sum"), "_bucket")
		if !known[n] && !known[base] {
			bad = append(bad, n)
		}
	}
	return bad
}

type alertRules struct {
	Groups []struct {
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// The example alert rules only use metrics the daemon exports, with the
// labels it sets, so a renamed metric cannot silently disarm an alert;
// they name no job of daemon.jobs, and each has a runbook in docs/.
func TestAlertRulesUseExportedMetrics(t *testing.T) {
	data, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc alertRules
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("%s: %v", alertsFile, err)
	}
	known := exported()
	wanted := map[string]bool{"PgkeepNoRecentBackup": false, "PgkeepArchiveFailing": false, "PgkeepArchiveLag": false, "PgkeepEtcdUnreachable": false}
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			if _, ok := wanted[r.Alert]; ok {
				wanted[r.Alert] = true
			}
			if r.Expr == "" {
				t.Errorf("alert %s has no expr", r.Alert)
			}
			for _, n := range usesUnknown(r.Expr, known) {
				t.Errorf("alert %s uses %s, which the daemon does not export", r.Alert, n)
			}
			if strings.Contains(r.Expr, `{job=`) {
				t.Errorf("alert %s selects on job=, but pgkeep's label is job_name (job is the scrape job)", r.Alert)
			}
			if strings.Contains(r.Expr, `job_name=`) || strings.Contains(r.Expr, `job_name=~`) {
				t.Errorf("alert %s names a job of daemon.jobs: the rules must hold whatever the jobs are called", r.Alert)
			}
			checkRunbook(t, r.Alert, r.Annotations["runbook_url"])
		}
	}
	for a, seen := range wanted {
		if !seen {
			t.Errorf("alert %s missing", a)
		}
	}
}

// checkRunbook requires url to point at a heading of a file in docs/.
func checkRunbook(t *testing.T, alert, url string) {
	t.Helper()
	const base = "https://github.com/pgkeep/pgkeep/blob/main/"
	path, anchor, ok := strings.Cut(strings.TrimPrefix(url, base), "#")
	if !strings.HasPrefix(url, base+"docs/") || !ok {
		t.Errorf("alert %s: runbook_url %q is not %sdocs/FILE#ANCHOR", alert, url, base)
		return
	}
	data, err := os.ReadFile(filepath.Join("..", path))
	if err != nil {
		t.Errorf("alert %s: runbook_url: %v", alert, err)
		return
	}
	for _, line := range strings.Split(string(data), "\n") {
		if h, ok := strings.CutPrefix(line, "#"); ok && slug(strings.TrimLeft(h, "#")) == anchor {
			return
		}
	}
	t.Errorf("alert %s: runbook_url %q: %s has no heading with that anchor", alert, url, path)
}

// slug is GitHub's anchor of a heading.
func slug(h string) string {
	h = strings.ToLower(strings.TrimSpace(h))
	var b strings.Builder
	for _, r := range h {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: install Debian's prometheus package (scripts/install-deps.sh)")
	}
	return p
}

// promtool accepts the rules, and its unit tests (testdata/alerts_test.yml)
// pass: every alert fires when it should and stays silent after a daemon
// restart and with a healthy archiver or repository.
func TestAlertRulesPromtool(t *testing.T) {
	pt := promtool(t)
	if out, err := exec.Command(pt, "check", "rules", alertsFile).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	cmd := exec.Command(pt, "test", "rules", "alerts_test.yml")
	cmd.Dir = "testdata"
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}

	// Every alert has a case that fires it and one where it stays silent.
	var rules alertRules
	data, _ := os.ReadFile(alertsFile)
	if err := yaml.Unmarshal(data, &rules); err != nil {
		t.Fatal(err)
	}
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	data, err := os.ReadFile("testdata/alerts_test.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &tests); err != nil {
		t.Fatal(err)
	}
	fires, silent := map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				silent[a.Alertname] = true
			}
		}
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if !fires[r.Alert] || !silent[r.Alert] {
				t.Errorf("alert %s: testdata/alerts_test.yml needs a case where it fires (%v) and one where it is silent (%v)", r.Alert, fires[r.Alert], silent[r.Alert])
			}
		}
	}
}

// The dashboard's expressions use only exported metrics, and no job of
// daemon.jobs by name (internal/e2e runs each against a real Prometheus).
func TestDashboardUsesExportedMetrics(t *testing.T) {
	data, err := os.ReadFile("../configs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("configs/grafana-dashboard.json: %v", err)
	}
	exprs := regexp.MustCompile(`"expr":\s*"((?:[^"\\]|\\.)*)"`).FindAllSubmatch(data, -1)
	if len(exprs) < 10 {
		t.Fatalf("dashboard: %d expressions", len(exprs))
	}
	known := exported()
	for _, m := range exprs {
		var e string
		if err := json.Unmarshal([]byte(`"`+string(m[1])+`"`), &e); err != nil {
			t.Fatal(err)
		}
		for _, n := range usesUnknown(e, known) {
			t.Errorf("dashboard expression %s uses %s, which the daemon does not export", e, n)
		}
		if strings.Contains(e, "job_name=") {
			t.Errorf("dashboard expression %s names a job of daemon.jobs", e)
		}
	}
}

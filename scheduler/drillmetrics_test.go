package scheduler

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// gauges is every sample of the metric name in reg, by job_name.
func gauges(t *testing.T, reg *prometheus.Registry, name string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "job_name" {
					out[l.GetValue()] = m.GetGauge().GetValue()
				}
			}
		}
	}
	return out
}

// The drill metrics follow the newest successful drill record, in
// whatever order records are seen; failures and other kinds leave them.
func TestDrillMetricsFromRecords(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewStandaloneMetrics(reg)
	if g := gauges(t, reg, MetricDrillLast); len(g) != 0 {
		t.Fatalf("drill series before any record: %v", g)
	}
	t1 := time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)
	m.recorded(Run{Job: "weekly", Kind: JobDrill, Status: StatusSucceeded, Finished: t1, QuerySeconds: 12.5})
	m.recorded(Run{Job: "weekly", Kind: JobDrill, Status: StatusSucceeded, Finished: t1.Add(-7 * 24 * time.Hour), QuerySeconds: 99})
	m.recorded(Run{Job: "weekly", Kind: JobDrill, Status: StatusFailed, Finished: t1.Add(time.Hour)})
	m.recorded(Run{Job: "nightly", Kind: JobBackup, Status: StatusSucceeded, Finished: t1.Add(time.Hour)})
	last, query := gauges(t, reg, MetricDrillLast), gauges(t, reg, MetricDrillQuery)
	if len(last) != 1 || last["weekly"] != float64(t1.Unix()) {
		t.Errorf("%s = %v, want only weekly at %v", MetricDrillLast, last, t1.Unix())
	}
	if len(query) != 1 || query["weekly"] != 12.5 {
		t.Errorf("%s = %v, want only weekly at 12.5 (the newest success's)", MetricDrillQuery, query)
	}
}

package scheduler_test

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/etcdtest"
	"github.com/pgkeep/pgkeep/scheduler"
)

// Node choice from Patroni keys in a real etcd, for every policy.
func TestChoose(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.Options{})
	cli := s.Client(t)
	const maxLag = 16 << 20
	type want struct{ primary, replica, prefer string }
	cases := []struct {
		name   string
		change map[string]*string // applied to threeNodes()
		want   want
		// eligible is Eligible's answer for prefer-replica.
		eligible []string
		// reason must appear in Choose's reason for the replica policy.
		reason string
	}{
		{name: "healthy", want: want{"pg1", "pg2", "pg2"}, eligible: []string{"pg2", "pg3", "pg1"}},
		{name: "nobackup tag on pg2",
			change: map[string]*string{"members/pg2": str(member(5433, "replica", "running", leaderPos, `{"nobackup":true,"clonefrom":true}`))},
			want:   want{"pg1", "pg3", "pg3"}, eligible: []string{"pg3", "pg1"}},
		{name: "nobackup as a string on the leader",
			change: map[string]*string{"members/pg1": str(member(5432, "master", "running", leaderPos, `{"nobackup":"true"}`))},
			want:   want{"", "pg2", "pg2"}, eligible: []string{"pg2", "pg3"}},
		{name: "pg2 lags beyond max_lag",
			change: map[string]*string{"members/pg2": str(member(5433, "replica", "running", leaderPos-maxLag-1, ""))},
			want:   want{"pg1", "pg3", "pg3"}, eligible: []string{"pg3", "pg1"}},
		{name: "both replicas lag",
			change: map[string]*string{
				"members/pg2": str(member(5433, "replica", "running", leaderPos-maxLag-1, "")),
				"members/pg3": str(member(5434, "replica", "running", 0, "")),
			},
			want: want{"pg1", "", "pg1"}, eligible: []string{"pg1"}, reason: "bytes behind"},
		{name: "lag exactly max_lag is allowed",
			change: map[string]*string{"members/pg2": str(member(5433, "replica", "running", leaderPos-maxLag, ""))},
			want:   want{"pg1", "pg2", "pg2"}, eligible: []string{"pg2", "pg3", "pg1"}},
		{name: "stopped and lag unknown",
			change: map[string]*string{
				"members/pg2": str(member(5433, "replica", "stopped", -1, "")),
				"members/pg3": str(member(5434, "replica", "running", -1, "")),
			},
			want: want{"pg1", "", "pg1"}, eligible: []string{"pg1"}, reason: "lag unknown"},
		{name: "creating replica",
			change: map[string]*string{"members/pg2": str(member(5433, "replica", "creating replica", -1, ""))},
			want:   want{"pg1", "pg3", "pg3"}, eligible: []string{"pg3", "pg1"}},
		{name: "no leader",
			change: map[string]*string{"leader": nil},
			want:   want{"", "", ""}, eligible: []string{}, reason: "no leader"},
		// Lag is then measured against the status key's optime.
		{name: "leader key without member key",
			change: map[string]*string{"members/pg1": nil},
			want:   want{"", "pg2", "pg2"}, eligible: []string{"pg2", "pg3"}},
		{name: "leader not running",
			change: map[string]*string{"members/pg1": str(member(5432, "master", "starting", leaderPos, ""))},
			want:   want{"", "pg2", "pg2"}, eligible: []string{"pg2", "pg3"}},
		{name: "after failover to pg3 (Patroni 3.1 role names)",
			change: map[string]*string{
				"leader":      str("pg3"),
				"members/pg3": str(member(5434, "primary", "running", leaderPos, "")),
				"members/pg1": str(member(5432, "replica", "streaming", leaderPos-10, "")),
				"members/pg2": str(member(5433, "replica", "streaming", leaderPos-20, "")),
			},
			want: want{"pg3", "pg1", "pg1"}, eligible: []string{"pg1", "pg2", "pg3"}},
		{name: "replica in archive recovery only",
			change: map[string]*string{
				"members/pg2": str(strings.Replace(member(5433, "replica", "running", leaderPos, ""), `"state"`, `"replication_state":"in archive recovery","state"`, 1)),
				"members/pg3": str(member(5434, "replica", "running", leaderPos, `{"nobackup":1}`)),
			},
			want: want{"pg1", "", "pg1"}, eligible: []string{"pg1"}, reason: "in archive recovery"},
		{name: "replica on an old timeline",
			change: map[string]*string{"members/pg2": str(strings.Replace(member(5433, "replica", "running", leaderPos, ""), `"timeline":1`, `"timeline":2`, 1))},
			want:   want{"pg1", "pg3", "pg3"}, eligible: []string{"pg3", "pg1"}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			scope := fmt.Sprintf("c%d", i)
			keys := threeNodes()
			for k, v := range tc.change {
				keys[k] = v
			}
			writeCluster(t, cli, scope, keys)
			view, err := connect(t, s, scope, "test").View(tctx(t, 10*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			got := want{}
			var reasons []string
			for _, p := range []struct {
				p   scheduler.Policy
				dst *string
			}{{scheduler.Primary, &got.primary}, {scheduler.Replica, &got.replica}, {scheduler.PreferReplica, &got.prefer}} {
				m, why := scheduler.Choose(view, p.p, maxLag)
				*p.dst = m
				reasons = append(reasons, string(p.p)+": "+why)
				if why == "" {
					t.Errorf("%s: empty reason", p.p)
				}
			}
			t.Logf("reasons: %s", strings.Join(reasons, " | "))
			if got != tc.want {
				t.Errorf("choice (primary, replica, prefer-replica) = %+v, want %+v", got, tc.want)
			}
			el := scheduler.Eligible(view, scheduler.PreferReplica, maxLag)
			if !reflect.DeepEqual(el, tc.eligible) {
				t.Errorf("eligible for prefer-replica = %q, want %q", el, tc.eligible)
			}
			if tc.reason != "" && !strings.Contains(reasons[1], tc.reason) {
				t.Errorf("replica reason %q does not say %q", reasons[1], tc.reason)
			}
		})
	}
}

func TestParse(t *testing.T) {
	for _, s := range []string{"*/3 * * * * *", "30 1 * * *", "@daily", "CRON_TZ=Europe/Paris 0 0 2 * * *"} {
		if _, err := scheduler.ParseSchedule(s); err != nil {
			t.Errorf("%q: %v", s, err)
		}
	}
	for _, s := range []string{"", "61 * * * *", "* * * * * * * *"} {
		if _, err := scheduler.ParseSchedule(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
	if _, err := scheduler.ParsePolicy("leader"); err == nil {
		t.Error("policy leader accepted")
	}
}

package status

import (
	"bytes"
	"strings"
	"testing"
)

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://u:secret@h:5432/db": "postgres://u:xxxxx@h:5432/db",
		"postgres://u@h:5432/db":        "postgres://u@h:5432/db",
		"http://127.0.0.1:8008/patroni": "http://127.0.0.1:8008/patroni",
	} {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// The text report names the leader, each member's role as Patroni's view
// implies it, and says when the local PostgreSQL could not be read.
func TestPrint(t *testing.T) {
	lag := uint64(160)
	rep := Report{
		Patroni: &Patroni{Scope: "main", Prefix: "/service/main/", Endpoints: []string{"127.0.0.1:2379"}, Leader: "pg1", Paused: true,
			Members: []Member{
				{Name: "pg1", Role: "master", Leader: true, State: "running", Timeline: 2},
				{Name: "pg2", Role: "replica", SyncStandby: true, State: "streaming", Timeline: 2, LagBytes: &lag, Tags: map[string]any{"nofailover": true, "replicatefrom": "pg1"}},
				{Name: "pg3", Role: "replica", Malformed: true},
			}},
		Postgres: &Postgres{Connection: "host=/tmp port=5432 user=postgres", Error: "connection refused"},
	}
	var b bytes.Buffer
	Print(&b, rep)
	out := b.String()
	for _, want := range []string{
		"Patroni cluster main (/service/main/ on 127.0.0.1:2379)",
		"leader: pg1\n", "maintenance mode (paused)",
		"pg1     leader", "pg2     sync standby", "nofailover,replicatefrom=pg1", "(unreadable member key)",
		"scheduled jobs: no run recorded",
		"Local PostgreSQL (host=/tmp port=5432 user=postgres)\n  error: connection refused",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}

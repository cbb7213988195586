package replicate

import "testing"

// The argv Patroni 3.0.2 builds for `pgkeep: {command: pgkeep create-replica,
// keep_data: true, no_leader: true}`: method keys first, in YAML order, as
// single --key=value words, then scope, role, datadir, connstring.
func TestParseArgsPatroni(t *testing.T) {
	var cfg string
	a, err := ParseArgs([]string{
		"--config=/etc/pgkeep/pgkeep.yml",
		"--keep_data=True", "--no_leader=True",
		"--scope=demo", "--role=replica", "--datadir=/var/lib/postgresql/15/main",
		"--connstring=dbname=postgres user=replicator host=127.0.0.1 port=5432",
	}, map[string]*string{"config": &cfg})
	if err != nil {
		t.Fatal(err)
	}
	if a.Scope != "demo" || a.Role != "replica" || a.DataDir != "/var/lib/postgresql/15/main" ||
		a.ConnString != "dbname=postgres user=replicator host=127.0.0.1 port=5432" || cfg != "/etc/pgkeep/pgkeep.yml" {
		t.Fatalf("parsed %+v config %q", a, cfg)
	}
	if a.Other["keep_data"] != "True" || a.Other["no_leader"] != "True" || len(a.Other) != 2 {
		t.Fatalf("other: %v", a.Other)
	}
}

func TestParseArgsNoLeaderAndOrder(t *testing.T) {
	var target string
	a, err := ParseArgs([]string{"--datadir=/d", "--connstring=", "--target-time", "2026-11-22T14:02:00Z", "--scope=s", "--verbose"},
		map[string]*string{"target_time": &target})
	if err != nil {
		t.Fatal(err)
	}
	if a.ConnString != "" || a.DataDir != "/d" || a.Scope != "s" || target != "2026-11-22T14:02:00Z" || a.Other["verbose"] != "true" {
		t.Fatalf("parsed %+v target %q", a, target)
	}
	if _, err := ParseArgs([]string{"/d"}, nil); err == nil {
		t.Fatal("a bare word was accepted")
	}
}

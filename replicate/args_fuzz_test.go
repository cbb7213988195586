package replicate

import (
	"sort"
	"strings"
	"testing"
)

// FuzzParseArgs: Patroni's argv parses into Args that, written back as
// --key=value words, parse to the same Args.
func FuzzParseArgs(f *testing.F) {
	f.Add("--keep_data=True\x00--no_leader=True\x00--scope=demo\x00--role=replica\x00--datadir=/var/lib/postgresql/15/main\x00--connstring=dbname=postgres user=replicator host=127.0.0.1 port=5432")
	f.Add("--scope=demo\x00--datadir=/var/lib/postgresql/15/main")
	f.Add("--datadir=/d\x00--connstring=\x00--target-time\x002026-11-22T14:02:00Z\x00--scope=s\x00--verbose")
	f.Add("create-replica")
	f.Fuzz(func(t *testing.T, argv string) {
		words := strings.Split(argv, "\x00")
		var target string
		a, err := ParseArgs(words, map[string]*string{"target_time": &target})
		if err != nil {
			return
		}
		again := []string{"--scope=" + a.Scope, "--role=" + a.Role, "--datadir=" + a.DataDir, "--connstring=" + a.ConnString, "--target_time=" + target}
		keys := make([]string, 0, len(a.Other))
		for k := range a.Other {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if k == "" || strings.Contains(k, "=") || strings.Contains(k, "-") {
				t.Fatalf("key %q from %q", k, words)
			}
			again = append(again, "--"+k+"="+a.Other[k])
		}
		var target2 string
		b, err := ParseArgs(again, map[string]*string{"target_time": &target2})
		if err != nil || b.Scope != a.Scope || b.Role != a.Role || b.DataDir != a.DataDir || b.ConnString != a.ConnString || target2 != target || len(b.Other) != len(a.Other) {
			t.Fatalf("%q -> %+v, again %+v %v", words, a, b, err)
		}
		for k, v := range a.Other {
			if b.Other[k] != v {
				t.Fatalf("%s: %q vs %q", k, v, b.Other[k])
			}
		}
	})
}

package ha

import (
	"encoding/json"
	"testing"
)

// Member keys as Patroni 3.0.2 writes them.
const (
	fuzzLeaderJSON  = `{"conn_url":"postgres://127.0.0.1:5432/postgres","api_url":"http://127.0.0.1:8008/patroni","state":"running","role":"master","version":"3.0.2","xlog_location":50331808,"timeline":1}`
	fuzzReplicaJSON = `{"conn_url":"postgres://127.0.0.1:5433/postgres","api_url":"http://127.0.0.1:8009/patroni","state":"running","role":"replica","version":"3.0.2","tags":{"nobackup":true,"clonefrom":true},"xlog_location":50331648,"timeline":1}`
)

// FuzzParseMember: any member value gives a Member (Malformed when it is
// not Patroni's JSON object), and lag arithmetic on it never wraps.
func FuzzParseMember(f *testing.F) {
	f.Add([]byte(fuzzReplicaJSON))
	f.Add([]byte(fuzzLeaderJSON))
	f.Add([]byte(`{"state":"stopped","role":"replica","version":"3.0.2"}`))
	f.Add([]byte(`{"xlog_location":-1,"timeline":"x"}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, v []byte) {
		m := parseMember("pg2", v)
		if m.Name != "pg2" {
			t.Fatalf("name %q", m.Name)
		}
		var obj map[string]json.RawMessage
		if json.Unmarshal(v, &obj) != nil && !m.Malformed {
			t.Fatalf("%q is not a JSON object, yet not Malformed", v)
		}
		cl := parseCluster("demo", map[string][]byte{"leader": []byte("pg1"), "members/pg1": []byte(fuzzLeaderJSON), "members/pg2": v})
		ref, ok := cl.LeaderOptime()
		if !ok {
			t.Fatal("no leader optime")
		}
		if lag, ok := cl.Lag(m); ok && m.HasXLogLocation && lag > ref {
			t.Fatalf("lag %d above the leader's position %d", lag, ref)
		}
		if lag, ok := cl.Lag(Member{Name: "pg1"}); !ok || lag != 0 {
			t.Fatal("leader lags")
		}
		m.Tag("nobackup")
	})
}

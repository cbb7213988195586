package ha

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Cluster is one consistent read of a Patroni cluster's keys.
type Cluster struct {
	Scope string
	// Leader is the member name in the leader key, "" when no member holds
	// it (failover in progress, or the cluster is down).
	Leader string
	// Members are the members/<name> keys, sorted by name. A member whose
	// key expired (Patroni stopped) is not listed.
	Members []Member
	// Optime is the leader's last reported WAL position from the status key
	// (or the legacy optime/leader key); 0 when neither exists.
	Optime uint64
	// Initialize is the PostgreSQL system identifier Patroni recorded at
	// bootstrap; "" when the cluster was never initialized.
	Initialize string
	// SyncStandbys are the members named in the sync key (synchronous_mode).
	SyncStandbys []string
	// Paused is true in maintenance mode (patronictl pause).
	Paused bool
	// StandbyCluster is true when the dynamic configuration has a
	// standby_cluster section: the leader then follows another cluster.
	StandbyCluster bool
	// SwitchoverPending is true while a failover key exists.
	SwitchoverPending bool
	// Config is the dynamic configuration as Patroni wrote it (config key),
	// nil when there is none.
	Config json.RawMessage
	// Revision is the etcd revision this view was read at.
	Revision int64
}

// Member is one members/<name> key.
type Member struct {
	Name string
	// Role as Patroni writes it: "master" (Patroni 3.0; "primary" from
	// 3.1 on), "replica", "standby_leader", "uninitialized", ...
	Role string
	// State: "running", "starting", "stopped", "crashed", "creating
	// replica", ...; later Patroni versions write "streaming" for replicas.
	State string
	// Timeline is 0 when Patroni did not report one.
	Timeline int
	// XLogLocation is the member's WAL position: the write position on the
	// leader, the received or replayed one on a replica. Valid only when
	// HasXLogLocation (Patroni omits it when PostgreSQL is not running).
	XLogLocation    uint64
	HasXLogLocation bool
	// ReplicationState is "streaming" or "in archive recovery" when Patroni
	// reports it (versions after 3.0.2; "" otherwise).
	ReplicationState string
	// Tags are the member's tags: nofailover, noloadbalance, clonefrom,
	// nosync, replicatefrom, and custom ones such as nobackup.
	Tags           map[string]any
	ConnURL        string
	APIURL         string
	Version        string
	PendingRestart bool
	// Malformed is true when the key's value is not Patroni's member JSON;
	// only Name is then known.
	Malformed bool
}

// memberData is Patroni's member JSON (patroni/ha.py touch_member).
type memberData struct {
	ConnURL          string         `json:"conn_url"`
	APIURL           string         `json:"api_url"`
	State            string         `json:"state"`
	Role             string         `json:"role"`
	Version          string         `json:"version"`
	XLogLocation     *json.Number   `json:"xlog_location"`
	Timeline         json.Number    `json:"timeline"`
	ReplicationState string         `json:"replication_state"`
	Tags             map[string]any `json:"tags"`
	PendingRestart   bool           `json:"pending_restart"`
}

// View reads all of the cluster's keys in one request (one revision).
// It returns an error wrapping ErrNoCluster when there are none.
func (c *Client) View(ctx context.Context) (Cluster, error) {
	rctx, cancel := c.request(ctx)
	defer cancel()
	prefix := c.Prefix()
	resp, err := c.cli.Get(rctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return Cluster{}, c.fail(ctx, "read "+prefix, c.timeout, err)
	}
	nodes := make(map[string][]byte, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		nodes[strings.TrimPrefix(string(kv.Key), prefix)] = kv.Value
	}
	cl := parseCluster(c.base[strings.LastIndex(c.base, "/")+1:], nodes)
	cl.Revision = resp.Header.GetRevision()
	if len(cl.Members) == 0 && cl.Leader == "" && cl.Initialize == "" && cl.Config == nil {
		return cl, fmt.Errorf("etcd %s: %w under %s (check the scope and namespace)", strings.Join(c.eps, ","), ErrNoCluster, prefix)
	}
	return cl, nil
}

// parseCluster builds a Cluster from keys relative to the cluster prefix,
// tolerating anything Patroni itself tolerates (patroni/dcs/etcd3.py).
func parseCluster(scope string, nodes map[string][]byte) Cluster {
	cl := Cluster{Scope: scope}
	cl.Leader = strings.TrimSpace(string(nodes["leader"]))
	cl.Initialize = strings.TrimSpace(string(nodes["initialize"]))
	if v, ok := nodes["status"]; ok {
		var st struct {
			Optime json.Number `json:"optime"`
		}
		if json.Unmarshal(v, &st) == nil {
			cl.Optime, _ = strconv.ParseUint(st.Optime.String(), 10, 64)
		}
	} else if v, ok := nodes["optime/leader"]; ok {
		cl.Optime, _ = strconv.ParseUint(strings.TrimSpace(string(v)), 10, 64)
	}
	if v, ok := nodes["config"]; ok && len(bytes.TrimSpace(v)) > 0 {
		cl.Config = json.RawMessage(v)
		var cfg struct {
			Pause          any             `json:"pause"`
			StandbyCluster json.RawMessage `json:"standby_cluster"`
		}
		if json.Unmarshal(v, &cfg) == nil {
			cl.Paused = truthy(cfg.Pause)
			sc := strings.TrimSpace(string(cfg.StandbyCluster))
			cl.StandbyCluster = sc != "" && sc != "null" && sc != "{}"
		}
	}
	if v, ok := nodes["sync"]; ok {
		var s struct {
			SyncStandby string `json:"sync_standby"`
		}
		if json.Unmarshal(v, &s) == nil {
			for _, n := range strings.Split(s.SyncStandby, ",") {
				if n = strings.TrimSpace(n); n != "" {
					cl.SyncStandbys = append(cl.SyncStandbys, n)
				}
			}
		}
	}
	_, cl.SwitchoverPending = nodes["failover"]
	for k, v := range nodes {
		name, ok := strings.CutPrefix(k, "members/")
		if !ok || name == "" || strings.Contains(name, "/") {
			continue
		}
		cl.Members = append(cl.Members, parseMember(name, v))
	}
	sort.Slice(cl.Members, func(i, j int) bool { return cl.Members[i].Name < cl.Members[j].Name })
	return cl
}

func parseMember(name string, v []byte) Member {
	m := Member{Name: name}
	var d memberData
	dec := json.NewDecoder(bytes.NewReader(v))
	dec.UseNumber()
	if err := dec.Decode(&d); err != nil || len(bytes.Trim(v[dec.InputOffset():], " \t\r\n")) > 0 {
		// Something after the object is not what Patroni writes either
		// (only JSON's own whitespace may follow: not \v, \f or U+0085).
		m.Malformed = true
		return m
	}
	m.Role, m.State, m.Version = d.Role, d.State, d.Version
	m.ConnURL, m.APIURL = d.ConnURL, d.APIURL
	m.ReplicationState, m.Tags, m.PendingRestart = d.ReplicationState, d.Tags, d.PendingRestart
	if tl, err := strconv.Atoi(d.Timeline.String()); err == nil {
		m.Timeline = tl
	}
	if d.XLogLocation != nil {
		if n, err := strconv.ParseUint(d.XLogLocation.String(), 10, 64); err == nil {
			m.XLogLocation, m.HasXLogLocation = n, true
		}
	}
	return m
}

// IsLeader reports whether the named member holds the leader key.
func (c Cluster) IsLeader(name string) bool { return name != "" && name == c.Leader }

// Member returns the named member.
func (c Cluster) Member(name string) (Member, bool) {
	for _, m := range c.Members {
		if m.Name == name {
			return m, true
		}
	}
	return Member{}, false
}

// LeaderMember returns the leader's member key; false when there is no
// leader or its member key is gone.
func (c Cluster) LeaderMember() (Member, bool) {
	if c.Leader == "" {
		return Member{}, false
	}
	return c.Member(c.Leader)
}

// IsSyncStandby reports whether the named member is a synchronous standby.
func (c Cluster) IsSyncStandby(name string) bool {
	for _, n := range c.SyncStandbys {
		if n == name {
			return true
		}
	}
	return false
}

// LeaderOptime is the newest leader WAL position known: the larger of the
// status key's optime and the leader member's xlog_location. Patroni
// refreshes both once per loop_wait, in separate writes.
func (c Cluster) LeaderOptime() (uint64, bool) {
	pos, ok := c.Optime, c.Optime > 0
	if lm, found := c.LeaderMember(); found && lm.HasXLogLocation {
		pos, ok = max(pos, lm.XLogLocation), true
	}
	return pos, ok
}

// Lag is how many bytes of WAL member m is behind the leader (0 for the
// leader itself and for a member ahead of the last report). It is unknown
// (false) when m reports no position or no leader position is known, like
// patronictl's "unknown".
func (c Cluster) Lag(m Member) (uint64, bool) {
	if c.IsLeader(m.Name) {
		return 0, true
	}
	ref, ok := c.LeaderOptime()
	if !ok || !m.HasXLogLocation {
		return 0, false
	}
	if m.XLogLocation >= ref {
		return 0, true
	}
	return ref - m.XLogLocation, true
}

// Tag reports whether a boolean tag is set (true, "true", "on", "yes",
// "1", or a non-zero number), e.g. m.Tag("nobackup").
func (m Member) Tag(name string) bool { return truthy(m.Tags[name]) }

func truthy(v any) bool {
	switch t := v.(type) {
	case bool:
		return t
	case string:
		switch strings.ToLower(strings.TrimSpace(t)) {
		case "true", "on", "yes", "1", "y", "t":
			return true
		}
	case json.Number:
		f, err := t.Float64()
		return err == nil && f != 0
	case float64:
		return t != 0
	}
	return false
}

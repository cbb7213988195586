package scheduler_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pgkeep/pgkeep/ha"
	"github.com/pgkeep/pgkeep/internal/etcdtest"
)

func tctx(t *testing.T, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

// member is Patroni 3.0.2's members/<name> JSON (patroni/ha.py
// touch_member). xlog < 0 leaves xlog_location out, as Patroni does when
// PostgreSQL is not running.
func member(port int, role, state string, xlog int64, tags string) string {
	s := fmt.Sprintf(`{"conn_url":"postgres://127.0.0.1:%d/postgres","api_url":"http://127.0.0.1:%d/patroni","state":%q,"role":%q,"version":"3.0.2"`, port, port+2576, state, role)
	if tags != "" {
		s += `,"tags":` + tags
	}
	if xlog >= 0 {
		s += fmt.Sprintf(`,"xlog_location":%d,"timeline":1`, xlog)
	}
	return s + "}"
}

const leaderPos = 100 << 20 // the leader's WAL position in the test clusters

// writeCluster replaces the keys of a Patroni cluster under
// /service/<scope>/ with keys (relative names), leader and members on one
// lease per member as Patroni writes them. A nil value deletes the key.
func writeCluster(t *testing.T, cli *clientv3.Client, scope string, keys map[string]*string) {
	t.Helper()
	ctx := tctx(t, 10*time.Second)
	prefix := "/service/" + scope + "/"
	for k, v := range keys {
		key := prefix + k
		if v == nil {
			if _, err := cli.Delete(ctx, key); err != nil {
				t.Fatal(err)
			}
			continue
		}
		var opts []clientv3.OpOption
		if strings.HasPrefix(k, "members/") || k == "leader" {
			g, err := cli.Grant(ctx, 300)
			if err != nil {
				t.Fatal(err)
			}
			opts = append(opts, clientv3.WithLease(g.ID))
		}
		if _, err := cli.Put(ctx, key, *v, opts...); err != nil {
			t.Fatal(err)
		}
	}
}

func str(s string) *string { return &s }

// threeNodes is a healthy cluster: pg1 leader, pg2 and pg3 streaming.
func threeNodes() map[string]*string {
	return map[string]*string{
		"leader":      str("pg1"),
		"status":      str(fmt.Sprintf(`{"optime":%d}`, leaderPos)),
		"initialize":  str("7234567890123456789"),
		"config":      str(`{"ttl":30,"loop_wait":10,"retry_timeout":10,"maximum_lag_on_failover":1048576}`),
		"members/pg1": str(member(5432, "master", "running", leaderPos, "")),
		"members/pg2": str(member(5433, "replica", "running", leaderPos-1000, "")),
		"members/pg3": str(member(5434, "replica", "running", leaderPos-2000, "")),
	}
}

func connect(t *testing.T, s *etcdtest.Server, scope, identity string) *ha.Client {
	t.Helper()
	c, err := ha.Connect(tctx(t, 10*time.Second), ha.Options{
		Endpoints:      []string{s.Endpoint},
		Scope:          scope,
		Identity:       identity,
		DialTimeout:    2 * time.Second,
		RequestTimeout: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// logBuffer collects a logger's lines for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) logger(member string) *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})).With("daemon", member)
}

// Package testport hands out TCP ports on 127.0.0.1 for the servers tests
// start (PostgreSQL, Patroni, etcd, MinIO).
package testport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

var (
	mu    sync.Mutex
	given = map[int]bool{}
)

// rangeEnv narrows the ports of this process to LOW-HIGH, inside
// 20000-31999: scripts/test.sh gives each `go test` process it runs at
// once a range of its own, so a port drawn in one process is not bound a
// moment later by a server of another.
const rangeEnv = "PGKEEP_TEST_PORTS"

func portRange() (lo, hi int, err error) {
	lo, hi = 20000, 31999
	v := os.Getenv(rangeEnv)
	if v == "" {
		return lo, hi, nil
	}
	a, b, ok := strings.Cut(v, "-")
	l, err1 := strconv.Atoi(a)
	h, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || l < lo || h > hi || h-l < 100 {
		return 0, 0, fmt.Errorf("%s=%q: want LOW-HIGH within %d-%d, at least 100 ports", rangeEnv, v, lo, hi)
	}
	return l, h, nil
}

// Free returns a port on 127.0.0.1 that was free a moment ago. It is drawn
// below Linux's ephemeral range (32768-60999 by default), not from it: a
// port a server binds minutes later (a Patroni node started after a
// failover) must not meanwhile become the source port of some outgoing
// connection, which ":0" ports did (a CI run failed on it). Ports handed
// out in this process are not handed out again; $PGKEEP_TEST_PORTS narrows
// the range.
func Free() (int, error) {
	mu.Lock()
	defer mu.Unlock()
	lo, hi, err := portRange()
	if err != nil {
		return 0, err
	}
	for range 1000 {
		p := lo + rand.IntN(hi-lo+1)
		if given[p] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		l.Close()
		given[p] = true
		return p, nil
	}
	return 0, fmt.Errorf("no free port on 127.0.0.1 in %d-%d", lo, hi)
}

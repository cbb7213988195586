// Package testport hands out TCP ports on 127.0.0.1 for the servers tests
// start (PostgreSQL, Patroni, etcd, MinIO).
package testport

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
)

var (
	mu    sync.Mutex
	given = map[int]bool{}
)

// Free returns a port on 127.0.0.1 that was free a moment ago. It is drawn
// below Linux's ephemeral range (32768-60999 by default), not from it: a
// port a server binds minutes later (a Patroni node started after a
// failover) must not meanwhile become the source port of some outgoing
// connection, which ":0" ports did (a CI run failed on it). Ports handed
// out in this process are not handed out again.
func Free() (int, error) {
	mu.Lock()
	defer mu.Unlock()
	for range 1000 {
		p := 20000 + rand.IntN(12000)
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
	return 0, errors.New("no free port on 127.0.0.1 in 20000-31999")
}

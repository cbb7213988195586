package daemon

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgkeep/pgkeep/storage"
)

type storageCounters struct {
	requests, errors *prometheus.CounterVec
}

func newStorageCounters() *storageCounters {
	c := &storageCounters{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricStorageRequests,
			Help: "Requests this daemon made to the repository's storage, by op (get, put, list, delete, stat)."}, []string{"op"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricStorageErrors,
			Help: "Storage requests that failed, by op; an object that is not there, a create-if-absent that found one, and a cancelled request are not failures."}, []string{"op"}),
	}
	for _, op := range storage.Ops {
		c.requests.WithLabelValues(string(op))
		c.errors.WithLabelValues(string(op))
	}
	return c
}

// wrap is a storage.Backend that counts b's requests.
func (c *storageCounters) wrap(b storage.Backend) storage.Backend {
	return storage.Counted(b, func(op storage.Op, failed bool) {
		c.requests.WithLabelValues(string(op)).Inc()
		if failed {
			c.errors.WithLabelValues(string(op)).Inc()
		}
	})
}

package daemon

import (
	"context"
	"errors"
	"io"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgkeep/pgkeep/storage"
)

// Storage request kinds, the op label of the storage request counters:
// what an object store bills by (GetRange counts as a get; a List is one
// call here, which S3 answers in pages of up to 1,000 names).
var storageOps = []string{"get", "put", "list", "delete", "stat"}

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
	for _, op := range storageOps {
		c.requests.WithLabelValues(op)
		c.errors.WithLabelValues(op)
	}
	return c
}

// wrap is a storage.Backend that counts b's requests.
func (c *storageCounters) wrap(b storage.Backend) storage.Backend {
	cb := &countedBackend{Backend: b, c: c}
	if p, ok := b.(storage.ConditionalPutProber); ok {
		return &countedProber{countedBackend: cb, p: p}
	}
	return cb
}

func (c *storageCounters) count(op string, err error) {
	c.requests.WithLabelValues(op).Inc()
	if err != nil && !errors.Is(err, storage.ErrNotFound) && !errors.Is(err, storage.ErrExists) && !errors.Is(err, context.Canceled) {
		c.errors.WithLabelValues(op).Inc()
	}
}

type countedBackend struct {
	storage.Backend
	c *storageCounters
}

func (b *countedBackend) Put(ctx context.Context, name string, r io.Reader, opts storage.PutOptions) error {
	err := b.Backend.Put(ctx, name, r, opts)
	b.c.count("put", err)
	return err
}

func (b *countedBackend) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	rc, err := b.Backend.Get(ctx, name)
	b.c.count("get", err)
	return rc, err
}

func (b *countedBackend) GetRange(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	rc, err := b.Backend.GetRange(ctx, name, offset, length)
	b.c.count("get", err)
	return rc, err
}

func (b *countedBackend) Stat(ctx context.Context, name string) (storage.ObjectInfo, error) {
	oi, err := b.Backend.Stat(ctx, name)
	b.c.count("stat", err)
	return oi, err
}

func (b *countedBackend) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	// An error of fn's own (a caller stopping early) is no storage failure.
	var fnErr error
	err := b.Backend.List(ctx, prefix, func(o storage.ObjectInfo) error {
		if e := fn(o); e != nil {
			fnErr = e
			return e
		}
		return nil
	})
	if fnErr != nil && errors.Is(err, fnErr) {
		b.c.count("list", nil)
	} else {
		b.c.count("list", err)
	}
	return err
}

func (b *countedBackend) Delete(ctx context.Context, name string) error {
	err := b.Backend.Delete(ctx, name)
	b.c.count("delete", err)
	return err
}

// countedProber keeps the backend's conditional-put probe visible
// through the wrapper (repo asks for it).
type countedProber struct {
	*countedBackend
	p storage.ConditionalPutProber
}

func (b *countedProber) ProbeConditionalPut(ctx context.Context) error {
	return b.p.ProbeConditionalPut(ctx)
}

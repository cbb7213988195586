package storage_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/mem"
)

// A registered scheme opens through storage.Open (mem registers in
// init()); an unknown one names the schemes there are.
func TestOpenRegistry(t *testing.T) {
	ctx := context.Background()
	b, err := storage.Open(ctx, "mem://registry-test", storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, "x", strings.NewReader("1"), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	// The same URL is the same store, like a directory or bucket.
	b2, err := storage.Open(ctx, "mem://registry-test", storage.Options{RateLimit: 1 << 20, MaxInFlight: 2, Retries: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b2.Stat(ctx, "x"); err != nil {
		t.Fatalf("second open: %v", err)
	}
	_, err = storage.Open(ctx, "gcs://bucket", storage.Options{})
	if err == nil || !strings.Contains(err.Error(), `unsupported scheme "gcs"`) || !strings.Contains(err.Error(), "mem") {
		t.Fatalf("unknown scheme: %v", err)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("registering a scheme twice did not panic")
		}
	}()
	storage.Register("mem", nil)
}

type probed struct {
	storage.Backend
	n int
}

func (p *probed) ProbeConditionalPut(context.Context) error { p.n++; return nil }

// repo init's conditional-put probe reaches the backend through every
// wrapper.
func TestWrappersPassProbe(t *testing.T) {
	p := &probed{Backend: mem.New()}
	var b storage.Backend = p
	b = storage.Retrying(b, 2)
	b = storage.Limited(b, 2)
	b = storage.RateLimited(b, 1<<20)
	b = storage.TagUnavailable(b)
	pr, ok := b.(storage.ConditionalPutProber)
	if !ok {
		t.Fatal("wrapped backend is not a prober")
	}
	if err := pr.ProbeConditionalPut(context.Background()); err != nil || p.n != 1 {
		t.Fatalf("probe: %v, %d calls", err, p.n)
	}
}

// Limited never lets more than n requests run at once, a Get's slot
// lasting until its body is closed.
func TestLimited(t *testing.T) {
	ctx := context.Background()
	m := mem.New()
	var inFlight, peak atomic.Int32
	m.FailGet = func(string) error {
		n := inFlight.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(5 * time.Millisecond)
		inFlight.Add(-1)
		return nil
	}
	m.Put(ctx, "o", strings.NewReader("data"), storage.PutOptions{})
	b := storage.Limited(m, 3)
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.Stat(ctx, "o")
		}()
	}
	wg.Wait()
	if p := peak.Load(); p > 3 || p < 2 {
		t.Fatalf("peak of %d requests at once, limit 3", p)
	}
	// Three open bodies hold every slot: a fourth request waits.
	var bodies []io.ReadCloser
	for range 3 {
		rc, err := b.Get(ctx, "o")
		if err != nil {
			t.Fatal(err)
		}
		bodies = append(bodies, rc)
	}
	tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := b.Stat(tctx, "o"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("fourth request with three bodies open: %v", err)
	}
	bodies[0].Close()
	bodies[0].Close() // a second Close gives back nothing more
	if _, err := b.Stat(ctx, "o"); err != nil {
		t.Fatalf("after a body closed: %v", err)
	}
	for _, rc := range bodies[1:] {
		rc.Close()
	}
}

// Retrying rides out transient failures, but an answer (not found, name
// taken) is returned at once and a create-if-absent is never repeated.
func TestRetrying(t *testing.T) {
	ctx := context.Background()
	m := mem.New()
	m.Put(ctx, "o", strings.NewReader("data"), storage.PutOptions{})
	fails := 2
	calls := 0
	flaky := errors.New("HTTP 503")
	m.FailGet = func(name string) error {
		calls++
		if name == "o" && fails > 0 {
			fails--
			return flaky
		}
		return nil
	}
	b := storage.Retrying(m, 3)
	if _, err := b.Stat(ctx, "o"); err != nil || calls != 3 {
		t.Fatalf("stat after two failures: %v (%d calls)", err, calls)
	}
	calls = 0
	if _, err := b.Get(ctx, "missing"); !errors.Is(err, storage.ErrNotFound) || calls != 1 {
		t.Fatalf("missing: %v (%d calls), want one call", err, calls)
	}
	puts := 0
	m.FailPut = func(string) error { puts++; return flaky }
	if err := b.Put(ctx, "n", bytes.NewReader([]byte("x")), storage.PutOptions{IfAbsent: true}); !errors.Is(err, flaky) || puts != 1 {
		t.Fatalf("IfAbsent put: %v (%d attempts), want one", err, puts)
	}
	puts = 0
	m.FailPut = func(string) error {
		puts++
		if puts < 3 {
			return flaky
		}
		return nil
	}
	if err := b.Put(ctx, "n", bytes.NewReader([]byte("whole")), storage.PutOptions{}); err != nil || puts != 3 {
		t.Fatalf("rewindable put: %v (%d attempts)", err, puts)
	}
	rc, _ := m.Get(ctx, "n")
	got, _ := io.ReadAll(rc)
	if string(got) != "whole" {
		t.Fatalf("retried put stored %q", got)
	}
}

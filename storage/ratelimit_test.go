package storage_test

import (
	"bytes"
	"context"
	"io"
	"math"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/fs"
)

// TestRateLimit: uploads and downloads through a limited fs backend run
// within 10 % of the limit (20 MB/s over 40 MB each way).
func TestRateLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 4 s")
	}
	const limit = 20 << 20
	const size = 40 << 20
	b, err := fs.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	lb := storage.RateLimited(b, limit)
	ctx := context.Background()
	data := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	check := func(what string, n int64, took time.Duration) {
		t.Helper()
		rate := float64(n) / took.Seconds()
		t.Logf("%s: %d bytes in %s: %.1f MiB/s (limit %d MiB/s)", what, n, took.Round(time.Millisecond), rate/(1<<20), limit>>20)
		if math.Abs(rate-limit)/limit > 0.10 {
			t.Errorf("%s ran at %.1f MiB/s, more than 10 %% off the limit of %d MiB/s", what, rate/(1<<20), limit>>20)
		}
	}
	start := time.Now()
	if err := lb.Put(ctx, "big", bytes.NewReader(data), storage.PutOptions{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	check("put", size, time.Since(start))

	start = time.Now()
	rc, err := lb.Get(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, rc)
	rc.Close()
	if err != nil || n != size {
		t.Fatalf("get: %d bytes, %v", n, err)
	}
	check("get", n, time.Since(start))

	// Unlimited, the same copy is far faster: the limit is what slowed it.
	start = time.Now()
	if err := b.Put(ctx, "big2", bytes.NewReader(data), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Logf("unlimited put took %s", d)
	}
}

func TestRateLimitCancel(t *testing.T) {
	b, err := fs.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	lb := storage.RateLimited(b, 64<<10)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = lb.Put(ctx, "x", bytes.NewReader(make([]byte, 10<<20)), storage.PutOptions{})
	if err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("put under a cancelled context: %v after %s", err, time.Since(start))
	}
	if _, err := b.Stat(context.Background(), "x"); err == nil {
		t.Error("a cancelled put left an object")
	}
	if storage.RateLimited(b, 0) != storage.Backend(b) {
		t.Error("a zero limit wraps the backend")
	}
}

package s3_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/s3test"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/s3"
	"github.com/pgkeep/pgkeep/storage/storagetest"
)

var seq atomic.Int64

func TestConformance(t *testing.T) {
	srv := s3test.Start(t)
	storagetest.Run(t, 12<<20, func(t *testing.T) storage.Backend {
		bucket := fmt.Sprintf("conf-%d", seq.Add(1))
		srv.CreateBucket(t, bucket)
		// 5 MiB parts: 12 MiB objects take the multipart path.
		return srv.Backend(t, bucket, "some/prefix", s3.Options{PartSize: 5 << 20, Concurrency: 2})
	})
}

// TestServerDown: with the server gone, operations fail within the
// configured timeout, the error never shows the secret key, and they work
// again once the server is back.
func TestServerDown(t *testing.T) {
	srv := s3test.Start(t)
	srv.CreateBucket(t, "down")
	b := srv.Backend(t, "down", "", s3.Options{Timeout: 3 * time.Second, MaxAttempts: 3})
	ctx := context.Background()
	if err := b.Put(ctx, "before", bytes.NewReader([]byte("x")), storage.PutOptions{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	srv.Stop(t)
	start := time.Now()
	err := b.Put(ctx, "during", bytes.NewReader([]byte("y")), storage.PutOptions{IfAbsent: true})
	if err == nil {
		t.Fatal("put succeeded with the server down")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("put took %s with a 3s timeout", d)
	}
	if strings.Contains(err.Error(), srv.SecretKey) {
		t.Fatalf("secret key in error: %v", err)
	}
	if _, err := b.Stat(ctx, "before"); err == nil || errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("stat with server down: %v (want a connection error, not 'not found')", err)
	}
	srv.Restart(t)
	if _, err := b.Stat(ctx, "before"); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if err := b.Put(ctx, "during", bytes.NewReader([]byte("y")), storage.PutOptions{IfAbsent: true}); err != nil {
		t.Fatalf("put after restart: %v", err)
	}
}

package storage

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"
)

// RateLimited wraps b so that the bodies of its Puts and Gets together
// pass at most bytesPerSec bytes a second (one budget for both
// directions, shared by every request of this process). Listing, Stat and
// Delete are not limited: they carry no object content.
func RateLimited(b Backend, bytesPerSec int64) Backend {
	if bytesPerSec <= 0 {
		return b
	}
	return &rateLimited{Backend: b, l: newLimiter(bytesPerSec)}
}

type rateLimited struct {
	Backend
	l *limiter
}

func (b *rateLimited) Put(ctx context.Context, name string, r io.Reader, opts PutOptions) error {
	return b.Backend.Put(ctx, name, &limitedReader{ctx: ctx, r: r, l: b.l}, opts)
}

func (b *rateLimited) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	rc, err := b.Backend.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	return &limitedReadCloser{limitedReader{ctx: ctx, r: rc, l: b.l}, rc}, nil
}

func (b *rateLimited) GetRange(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	rc, err := b.Backend.GetRange(ctx, name, offset, length)
	if err != nil {
		return nil, err
	}
	return &limitedReadCloser{limitedReader{ctx: ctx, r: rc, l: b.l}, rc}, nil
}

func (b *rateLimited) String() string { return b.Backend.String() }

// ProbeConditionalPut passes repo init's probe through to a backend that
// needs it.
func (b *rateLimited) ProbeConditionalPut(ctx context.Context) error {
	if p, ok := b.Backend.(ConditionalPutProber); ok {
		return p.ProbeConditionalPut(ctx)
	}
	return nil
}

// limiter paces bytes: each take of n bytes is scheduled n/rate after the
// previous one ended, allowing a burst of at most a twentieth of a second.
type limiter struct {
	rate  float64 // bytes per second
	burst time.Duration

	mu   sync.Mutex
	next time.Time // when the bytes taken so far are paid for
}

func newLimiter(bytesPerSec int64) *limiter {
	return &limiter{rate: float64(bytesPerSec), burst: 50 * time.Millisecond}
}

// chunk is the most one read takes at once: a twentieth of a second's
// worth, at least 4 KiB.
func (l *limiter) chunk() int { return max(4096, int(l.rate/20)) }

// wait accounts for n bytes and sleeps until they are within the rate.
func (l *limiter) wait(ctx context.Context, n int) error {
	l.mu.Lock()
	now := time.Now()
	if l.next.Before(now.Add(-l.burst)) {
		l.next = now.Add(-l.burst)
	}
	l.next = l.next.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	d := l.next.Sub(now)
	l.mu.Unlock()
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("rate limit: %w", ctx.Err())
	}
}

type limitedReader struct {
	ctx context.Context
	r   io.Reader
	l   *limiter
}

func (r *limitedReader) Read(p []byte) (int, error) {
	if c := r.l.chunk(); len(p) > c {
		p = p[:c]
	}
	n, err := r.r.Read(p)
	if n > 0 {
		if werr := r.l.wait(r.ctx, n); werr != nil {
			return n, werr
		}
	}
	return n, err
}

type limitedReadCloser struct {
	limitedReader
	c io.Closer
}

func (r *limitedReadCloser) Close() error { return r.c.Close() }

package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// The wrappers here add one policy each around any Backend. Each passes
// ProbeConditionalPut through, so repo init still probes the store under
// them.

func probe(ctx context.Context, b Backend) error {
	if p, ok := b.(ConditionalPutProber); ok {
		return p.ProbeConditionalPut(ctx)
	}
	return nil
}

// ErrUnavailable marks errors of the storage itself (unreachable, timed
// out, refused, cut off mid-download): the store could not say whether the
// object exists. Such a failure may heal; it never means "not there".
var ErrUnavailable = errors.New("storage unavailable")

// TagUnavailable wraps b so that every error its read operations return,
// other than ErrNotFound, also matches ErrUnavailable, including errors
// while reading an object's body. Errors a caller makes of the bytes it
// did get (a wrong key, a corrupt or truncated object) are not storage
// errors and stay untagged. wal-fetch uses it to tell "missing" from
// "cannot tell".
func TagUnavailable(b Backend) Backend { return tagged{b} }

type tagged struct{ Backend }

func tag(err error) error {
	if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, ErrUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

func (t tagged) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	return t.GetRange(ctx, name, 0, -1)
}

func (t tagged) GetRange(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	rc, err := t.Backend.GetRange(ctx, name, offset, length)
	if err != nil {
		return nil, tag(err)
	}
	return taggedReader{rc}, nil
}

func (t tagged) Stat(ctx context.Context, name string) (ObjectInfo, error) {
	fi, err := t.Backend.Stat(ctx, name)
	return fi, tag(err)
}

func (t tagged) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	var fnErr error
	err := t.Backend.List(ctx, prefix, func(oi ObjectInfo) error {
		fnErr = fn(oi)
		return fnErr
	})
	if err != nil && fnErr != nil && errors.Is(err, fnErr) {
		return err // the callback's own error, not the storage's
	}
	return tag(err)
}

func (t tagged) ProbeConditionalPut(ctx context.Context) error { return probe(ctx, t.Backend) }

type taggedReader struct{ io.ReadCloser }

func (r taggedReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		err = tag(err)
	}
	return n, err
}

// Limited wraps b so that at most n requests run at once (n <= 0: b as
// is). A Get's slot is held until its body is closed; a List's only until
// its first callback, so a callback may use the backend. A caller holding
// n bodies open and asking for another waits for one of them to close.
func Limited(b Backend, n int) Backend {
	if n <= 0 {
		return b
	}
	return &limited{Backend: b, slots: make(chan struct{}, n)}
}

type limited struct {
	Backend
	slots chan struct{}
}

func (l *limited) take(ctx context.Context) error {
	select {
	case l.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for a storage request slot: %w", ctx.Err())
	}
}

func (l *limited) give() { <-l.slots }

func (l *limited) Put(ctx context.Context, name string, r io.Reader, opts PutOptions) error {
	if err := l.take(ctx); err != nil {
		return err
	}
	defer l.give()
	return l.Backend.Put(ctx, name, r, opts)
}

func (l *limited) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	return l.GetRange(ctx, name, 0, -1)
}

func (l *limited) GetRange(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	if err := l.take(ctx); err != nil {
		return nil, err
	}
	rc, err := l.Backend.GetRange(ctx, name, offset, length)
	if err != nil {
		l.give()
		return nil, err
	}
	return &slotCloser{ReadCloser: rc, give: l.give}, nil
}

func (l *limited) Stat(ctx context.Context, name string) (ObjectInfo, error) {
	if err := l.take(ctx); err != nil {
		return ObjectInfo{}, err
	}
	defer l.give()
	return l.Backend.Stat(ctx, name)
}

func (l *limited) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	if err := l.take(ctx); err != nil {
		return err
	}
	held := true
	defer func() {
		if held {
			l.give()
		}
	}()
	return l.Backend.List(ctx, prefix, func(oi ObjectInfo) error {
		if held {
			held = false
			l.give()
		}
		return fn(oi)
	})
}

func (l *limited) Delete(ctx context.Context, name string) error {
	if err := l.take(ctx); err != nil {
		return err
	}
	defer l.give()
	return l.Backend.Delete(ctx, name)
}

func (l *limited) ProbeConditionalPut(ctx context.Context) error { return probe(ctx, l.Backend) }

type slotCloser struct {
	io.ReadCloser
	give   func()
	closed bool
}

func (s *slotCloser) Close() error {
	err := s.ReadCloser.Close()
	if !s.closed {
		s.closed = true
		s.give()
	}
	return err
}

// Retry backoff: the first retry after retryMin, doubling up to retryMax.
var (
	retryMin = 200 * time.Millisecond
	retryMax = 5 * time.Second
)

// Retrying wraps b so that a failed request is tried up to n more times,
// with backoff (n <= 0: b as is). Answers are not retried (ErrNotFound,
// ErrExists, a cancelled context, a List callback's own error), nor is
// anything that cannot be repeated safely: a Put whose body cannot be
// rewound, an IfAbsent Put (its own first attempt may have won, and the
// retry would report the name taken), a List that has already called its
// callback, or reading a body already opened.
func Retrying(b Backend, n int) Backend {
	if n <= 0 {
		return b
	}
	return &retrying{Backend: b, n: n}
}

type retrying struct {
	Backend
	n int
}

func retryable(ctx context.Context, err error) bool {
	return err != nil && ctx.Err() == nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrExists) &&
		!errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// do runs op until it succeeds, gives an answer, or the retries are used up.
func (r *retrying) do(ctx context.Context, op func() error) error {
	wait := retryMin
	for attempt := 0; ; attempt++ {
		err := op()
		if attempt >= r.n || !retryable(ctx, err) {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, retryMax)
	}
}

func (r *retrying) Put(ctx context.Context, name string, body io.Reader, opts PutOptions) error {
	s, ok := body.(io.Seeker)
	if !ok || opts.IfAbsent {
		return r.Backend.Put(ctx, name, body, opts)
	}
	start, err := s.Seek(0, io.SeekCurrent)
	if err != nil {
		return r.Backend.Put(ctx, name, body, opts)
	}
	first := true
	return r.do(ctx, func() error {
		if !first {
			if _, err := s.Seek(start, io.SeekStart); err != nil {
				return fmt.Errorf("put %s: rewind for retry: %w", name, err)
			}
		}
		first = false
		return r.Backend.Put(ctx, name, body, opts)
	})
}

func (r *retrying) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	return r.GetRange(ctx, name, 0, -1)
}

func (r *retrying) GetRange(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := r.do(ctx, func() error {
		var err error
		rc, err = r.Backend.GetRange(ctx, name, offset, length)
		return err
	})
	return rc, err
}

func (r *retrying) Stat(ctx context.Context, name string) (ObjectInfo, error) {
	var oi ObjectInfo
	err := r.do(ctx, func() error {
		var err error
		oi, err = r.Backend.Stat(ctx, name)
		return err
	})
	return oi, err
}

func (r *retrying) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	called := false
	var fnErr error
	wait := retryMin
	for attempt := 0; ; attempt++ {
		err := r.Backend.List(ctx, prefix, func(oi ObjectInfo) error {
			called = true
			fnErr = fn(oi)
			return fnErr
		})
		if called || attempt >= r.n || !retryable(ctx, err) || (fnErr != nil && errors.Is(err, fnErr)) {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, retryMax)
	}
}

func (r *retrying) Delete(ctx context.Context, name string) error {
	return r.do(ctx, func() error { return r.Backend.Delete(ctx, name) })
}

func (r *retrying) ProbeConditionalPut(ctx context.Context) error { return probe(ctx, r.Backend) }

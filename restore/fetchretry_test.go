package restore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/fs"
)

// flaky fails the first failures reads of WAL objects with err, and
// cuts bodies short after cutAfter bytes when cutAfter > 0.
type flaky struct {
	storage.Backend
	failures atomic.Int32
	err      error
	calls    atomic.Int32
	cutAfter int
}

func (f *flaky) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	return f.GetRange(ctx, name, 0, -1)
}

func (f *flaky) GetRange(ctx context.Context, name string, off, n int64) (io.ReadCloser, error) {
	if strings.HasPrefix(name, "wal/") {
		f.calls.Add(1)
		if f.failures.Add(-1) >= 0 {
			return nil, f.err
		}
	}
	rc, err := f.Backend.GetRange(ctx, name, off, n)
	if err == nil && f.cutAfter > 0 && strings.HasPrefix(name, "wal/") {
		return struct {
			io.Reader
			io.Closer
		}{io.MultiReader(io.LimitReader(rc, int64(f.cutAfter)), errReader{syscall.ECONNRESET}), rc}, nil
	}
	return rc, err
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

const seg = "000000010000000000000003"

func newFlakyRepo(t *testing.T) (*flaky, func(context.Context) (*repo.Repository, error)) {
	t.Helper()
	b, err := fs.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Init(context.Background(), b, repo.InitOptions{CompressionLevel: 1, Now: time.Now()}); err != nil {
		t.Fatal(err)
	}
	f := &flaky{Backend: b, err: errors.New("dial tcp 127.0.0.1:9: connect: connection refused")}
	open := func(ctx context.Context) (*repo.Repository, error) {
		return repo.Open(ctx, storage.TagUnavailable(f), repo.OpenOptions{CompressionLevel: -1})
	}
	return f, open
}

func noSleep(context.Context, time.Duration) error { return nil }

func TestClassify(t *testing.T) {
	nf := storage.TagUnavailable(errBackend{storage.ErrNotFound})
	_, err := nf.Get(context.Background(), "x")
	if !errors.Is(err, storage.ErrNotFound) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("not found tagged: %v", err)
	}
	down := storage.TagUnavailable(errBackend{syscall.ECONNREFUSED})
	_, err = down.Get(context.Background(), "x")
	if Classify(err) != Unavailable || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("storage error: %v -> %d", err, Classify(err))
	}
	if _, err := down.Stat(context.Background(), "x"); Classify(err) != Unavailable {
		t.Fatalf("stat: %v", err)
	}
	for err, want := range map[error]Outcome{
		nil:                              Fetched,
		ErrWALNotFound:                   Missing,
		errors.New("wrong key"):          Failed,
		repo.ErrNotInitialized:           Failed,
		storage.ErrNotFound:              Failed, // only FetchWAL says what a missing object means
		context.DeadlineExceeded:         Failed, // untagged: not from storage
		tag(context.DeadlineExceeded):    Unavailable,
		tag(storage.ErrNotFound):         Failed,
		errors.Join(ErrWALNotFound):      Missing,
		tag(errors.New("HTTP 503")):      Unavailable,
		tag(tag(errors.New("HTTP 500"))): Unavailable,
	} {
		if got := Classify(err); got != want {
			t.Errorf("Classify(%v) = %d, want %d", err, got, want)
		}
	}
}

type errBackend struct{ err error }

func (e errBackend) Put(context.Context, string, io.Reader, storage.PutOptions) error { return e.err }
func (e errBackend) Get(context.Context, string) (io.ReadCloser, error)               { return nil, e.err }
func (e errBackend) GetRange(context.Context, string, int64, int64) (io.ReadCloser, error) {
	return nil, e.err
}
func (e errBackend) Stat(context.Context, string) (storage.ObjectInfo, error) {
	return storage.ObjectInfo{}, e.err
}
func (e errBackend) List(context.Context, string, func(storage.ObjectInfo) error) error {
	return e.err
}
func (e errBackend) Delete(context.Context, string) error { return e.err }
func (e errBackend) String() string                       { return "err" }

// A transient outage shorter than the retry time is ridden out; an object
// that is not archived is Missing at once, even after storage errors.
func TestFetchRetryRidesOutOutage(t *testing.T) {
	f, open := newFlakyRepo(t)
	f.failures.Store(3)
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	_, err := FetchWALRetry(context.Background(), open, FetchOptions{Name: seg, Dest: dest},
		RetryOptions{RetryTime: time.Minute, sleep: noSleep})
	if Classify(err) != Missing || f.calls.Load() != 4 {
		t.Fatalf("after 3 failures: %v (%d calls), want Missing after 4 calls", err, f.calls.Load())
	}
}

// Storage that stays down is never reported as "missing".
func TestFetchRetryGivesUp(t *testing.T) {
	f, open := newFlakyRepo(t)
	f.failures.Store(1 << 30)
	var slept time.Duration
	sleep := func(_ context.Context, d time.Duration) error { slept += d; time.Sleep(time.Millisecond); return nil }
	start := time.Now()
	_, err := FetchWALRetry(context.Background(), open, FetchOptions{Name: seg, Dest: filepath.Join(t.TempDir(), "x")},
		RetryOptions{RetryTime: 50 * time.Millisecond, sleep: sleep})
	if Classify(err) != Unavailable || !strings.Contains(err.Error(), "gave up after") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("storage down: %v -> %d", err, Classify(err))
	}
	if time.Since(start) > 5*time.Second || f.calls.Load() < 2 {
		t.Fatalf("retried %d times in %s", f.calls.Load(), time.Since(start))
	}
	// No retry time: one attempt.
	f.calls.Store(0)
	_, err = FetchWALRetry(context.Background(), open, FetchOptions{Name: seg, Dest: filepath.Join(t.TempDir(), "x")},
		RetryOptions{sleep: noSleep})
	if Classify(err) != Unavailable || f.calls.Load() != 1 {
		t.Fatalf("retry time 0: %v, %d calls", err, f.calls.Load())
	}
}

// A repository whose config cannot be read because storage is down is
// retried too; a context cancelled (PostgreSQL shutting down) ends the wait
// without turning into "missing".
func TestFetchRetryOpenAndCancel(t *testing.T) {
	f, _ := newFlakyRepo(t)
	var opens atomic.Int32
	open := func(ctx context.Context) (*repo.Repository, error) {
		if opens.Add(1) < 3 {
			_, err := storage.TagUnavailable(errBackend{syscall.ECONNREFUSED}).Get(ctx, repo.ConfigObject)
			return nil, err
		}
		return repo.Open(ctx, storage.TagUnavailable(f), repo.OpenOptions{CompressionLevel: -1})
	}
	_, err := FetchWALRetry(context.Background(), open, FetchOptions{Name: seg, Dest: filepath.Join(t.TempDir(), "x")},
		RetryOptions{RetryTime: time.Minute, sleep: noSleep})
	if Classify(err) != Missing || opens.Load() != 3 {
		t.Fatalf("open retried: %v after %d opens", err, opens.Load())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f.failures.Store(1 << 30)
	_, err = FetchWALRetry(ctx, func(ctx context.Context) (*repo.Repository, error) {
		return repo.Open(context.Background(), storage.TagUnavailable(f), repo.OpenOptions{CompressionLevel: -1})
	}, FetchOptions{Name: seg, Dest: filepath.Join(t.TempDir(), "x")}, RetryOptions{RetryTime: time.Hour})
	if Classify(err) == Missing || err == nil {
		t.Fatalf("cancelled: %v", err)
	}
}

// A corrupt or truncated object is Failed, at once: retrying cannot fix it.
// A body cut off by the network is Unavailable.
func TestFetchCorruptAndCutOff(t *testing.T) {
	f, open := newFlakyRepo(t)
	if _, err := open(context.Background()); err != nil {
		t.Fatal(err)
	}
	// A real archived object, then damaged copies of it.
	plain := make([]byte, 16<<20)
	rand.NewChaCha8([32]byte{1}).Read(plain[:8<<20])
	var enc bytes.Buffer
	// The repository's codec: level 1, no encryption (newFlakyRepo).
	if err := (&repo.Codec{Level: 1}).EncodeBytes(&enc, plain); err != nil {
		t.Fatal(err)
	}
	wf, err := pg.ParseWALFileName(seg)
	if err != nil {
		t.Fatal(err)
	}
	name := repo.WALObjectName(wf)
	put := func(data []byte) {
		if err := f.Backend.Delete(context.Background(), name); err != nil {
			t.Fatal(err)
		}
		if err := f.Backend.Put(context.Background(), name, bytes.NewReader(data), storage.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	fetch := func() error {
		f.calls.Store(0)
		_, err := FetchWALRetry(context.Background(), open, FetchOptions{Name: seg, Dest: dest},
			RetryOptions{RetryTime: time.Minute, sleep: noSleep})
		return err
	}
	put(enc.Bytes())
	if err := fetch(); err != nil {
		t.Fatalf("intact object: %v", err)
	}
	if got, _ := os.ReadFile(dest); !bytes.Equal(got, plain) {
		t.Fatal("fetched content differs")
	}
	os.Remove(dest)
	put(enc.Bytes()[:enc.Len()/2])
	if err := fetch(); Classify(err) != Failed || f.calls.Load() != 1 {
		t.Fatalf("truncated object: %v -> %d after %d calls, want Failed at once", err, Classify(err), f.calls.Load())
	}
	damaged := bytes.Clone(enc.Bytes())
	damaged[len(damaged)/4] ^= 0xff
	put(damaged)
	if err := fetch(); Classify(err) != Failed || f.calls.Load() != 1 {
		t.Fatalf("corrupt object: %v -> %d", err, Classify(err))
	}
	if _, err := os.Stat(dest); err == nil {
		t.Fatal("a damaged object reached dest")
	}
	put(enc.Bytes())
	f.cutAfter = 1000
	f.calls.Store(0)
	_, err = FetchWALRetry(context.Background(), open, FetchOptions{Name: seg, Dest: dest},
		RetryOptions{RetryTime: 20 * time.Millisecond, sleep: func(context.Context, time.Duration) error { time.Sleep(5 * time.Millisecond); return nil }})
	if Classify(err) != Unavailable || f.calls.Load() < 2 {
		t.Fatalf("body cut off: %v -> %d after %d calls", err, Classify(err), f.calls.Load())
	}
}

func TestRecoveryMode(t *testing.T) {
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "pg_wal"), 0o700)
	for _, c := range []struct{ dest, cwd, want string }{
		{"pg_wal/RECOVERYXLOG", dir, dir},
		{"pg_wal/RECOVERYHISTORY", dir, dir},
		{filepath.Join(dir, "pg_wal", seg), "/", dir},
		{"../" + filepath.Base(dir) + "/pg_wal/x", dir, dir},
		{"somewhere/else", dir, dir},
	} {
		if got := DataDirOf(c.dest, c.cwd); got != c.want {
			t.Errorf("DataDirOf(%q, %q) = %q, want %q", c.dest, c.cwd, got, c.want)
		}
	}
	if m := DetectRecoveryMode(dir); m != ModeUnknown {
		t.Fatalf("no signal file: %s", m)
	}
	os.WriteFile(filepath.Join(dir, "recovery.signal"), nil, 0o600)
	if m := DetectRecoveryMode(dir); m != ModeArchiveRecovery {
		t.Fatalf("recovery.signal: %s", m)
	}
	os.WriteFile(filepath.Join(dir, "standby.signal"), nil, 0o600)
	if m := DetectRecoveryMode(dir); m != ModeStandby {
		t.Fatalf("both signal files: %s (PostgreSQL runs a standby)", m)
	}
	os.Remove(filepath.Join(dir, "recovery.signal"))
	if m := DetectRecoveryMode(dir); m != ModeStandby {
		t.Fatalf("standby.signal: %s", m)
	}
}

// tag is what storage.TagUnavailable makes of a storage error err.
func tag(err error) error {
	_, e := storage.TagUnavailable(errBackend{err}).Stat(context.Background(), "x")
	return e
}

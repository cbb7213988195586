// Package mem is a storage backend held in memory, for fast tests of the
// repository and of the pipelines above it: it keeps every promise of
// storage.Backend (atomic Put, atomic create-if-absent, ranges, lexical
// listing) and passes the same conformance suite as fs and s3, so a test
// that passes on it says something about the real backends.
//
// Faults can be injected per operation (Backend.FailPut, Backend.FailGet),
// which is what "a failing put mid-pack" tests need.
package mem

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pgkeep/pgkeep/storage"
)

func init() {
	storage.Register("mem", open)
}

// Config is the mem backend's configuration: a name, so that two opens of
// "mem://name" in one process see the same objects (like one directory or
// one bucket would).
type Config struct {
	Name string
}

var (
	namedMu sync.Mutex
	named   = map[string]*Backend{}
)

func open(_ context.Context, u *url.URL, _ storage.Options) (storage.Backend, error) {
	c := Config{Name: u.Host + u.Path}
	namedMu.Lock()
	defer namedMu.Unlock()
	if b, ok := named[c.Name]; ok {
		return b, nil
	}
	b := New()
	b.name = c.Name
	named[c.Name] = b
	return b, nil
}

type object struct {
	data    []byte
	modTime time.Time
	etag    string
}

// Backend is a map of objects guarded by one mutex. Put reads the whole
// body before it takes the lock, so a reader never sees a partial object
// and a failed or cancelled Put publishes nothing.
type Backend struct {
	name string

	mu      sync.Mutex
	objects map[string]object

	// FailPut, when set, is asked before every Put is published; a
	// non-nil error fails that Put (nothing is stored).
	FailPut func(name string) error
	// FailGet, when set, is asked before every Get, GetRange and Stat.
	FailGet func(name string) error
}

// New returns an empty backend.
func New() *Backend { return &Backend{objects: map[string]object{}} }

func (b *Backend) String() string { return "mem://" + b.name }

func checkName(name string) error {
	if name == "" || strings.HasPrefix(name, "/") {
		return fmt.Errorf("invalid object name %q", name)
	}
	return nil
}

// Put implements storage.Backend.
func (b *Backend) Put(ctx context.Context, name string, r io.Reader, opts storage.PutOptions) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, ctxReader{ctx, r}); err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	// Nothing is published for a caller that gave up meanwhile.
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	if b.FailPut != nil {
		if err := b.FailPut(name); err != nil {
			return fmt.Errorf("put %s: %w", name, err)
		}
	}
	sum := sha256.Sum256(buf.Bytes())
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.objects[name]; ok && opts.IfAbsent {
		return fmt.Errorf("put %s: %w", name, storage.ErrExists)
	}
	b.objects[name] = object{data: buf.Bytes(), modTime: time.Now(), etag: hex.EncodeToString(sum[:16])}
	return nil
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func (b *Backend) lookup(ctx context.Context, op, name string) (object, error) {
	if err := checkName(name); err != nil {
		return object{}, err
	}
	if err := ctx.Err(); err != nil {
		return object{}, fmt.Errorf("%s %s: %w", op, name, err)
	}
	if b.FailGet != nil {
		if err := b.FailGet(name); err != nil {
			return object{}, fmt.Errorf("%s %s: %w", op, name, err)
		}
	}
	b.mu.Lock()
	o, ok := b.objects[name]
	b.mu.Unlock()
	if !ok {
		return object{}, fmt.Errorf("%s %s: %w", op, name, storage.ErrNotFound)
	}
	return o, nil
}

// Get implements storage.Backend.
func (b *Backend) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	return b.GetRange(ctx, name, 0, -1)
}

// GetRange implements storage.Backend. The stored slice is never written
// again (Put replaces it), so readers share it without a copy.
func (b *Backend) GetRange(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	o, err := b.lookup(ctx, "get", name)
	if err != nil {
		return nil, err
	}
	if offset < 0 {
		return nil, fmt.Errorf("get %s: negative offset %d", name, offset)
	}
	data := o.data[min(offset, int64(len(o.data))):]
	if length >= 0 && length < int64(len(data)) {
		data = data[:length]
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}

// Stat implements storage.Backend.
func (b *Backend) Stat(ctx context.Context, name string) (storage.ObjectInfo, error) {
	o, err := b.lookup(ctx, "stat", name)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	return storage.ObjectInfo{Name: name, Size: int64(len(o.data)), ModTime: o.modTime, ETag: o.etag}, nil
}

// List implements storage.Backend. It works on a snapshot of the names, so
// fn may call the backend.
func (b *Backend) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %s: %w", prefix, err)
	}
	b.mu.Lock()
	var infos []storage.ObjectInfo
	for name, o := range b.objects {
		if strings.HasPrefix(name, prefix) {
			infos = append(infos, storage.ObjectInfo{Name: name, Size: int64(len(o.data)), ModTime: o.modTime, ETag: o.etag})
		}
	}
	b.mu.Unlock()
	sort.Slice(infos, func(i, j int) bool { return infos[i].Name < infos[j].Name })
	for _, oi := range infos {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("list %s: %w", prefix, err)
		}
		if err := fn(oi); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements storage.Backend.
func (b *Backend) Delete(ctx context.Context, name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	b.mu.Lock()
	delete(b.objects, name)
	b.mu.Unlock()
	return nil
}

// Names returns every stored name in lexical order (for tests).
func (b *Backend) Names() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	names := make([]string, 0, len(b.objects))
	for n := range b.objects {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Corrupt flips a byte of the stored object at offset (for tests of what
// readers make of a damaged object). It reports whether there was one.
func (b *Backend) Corrupt(name string, offset int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	o, ok := b.objects[name]
	if !ok || offset < 0 || offset >= len(o.data) {
		return false
	}
	data := bytes.Clone(o.data)
	data[offset] ^= 0xff
	o.data = data
	b.objects[name] = o
	return true
}

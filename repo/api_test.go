package repo_test

// Unit tests of repo's purpose-named calls on the in-memory backend: what
// wal-push, wal-fetch and a backup's pack writer rely on, in milliseconds.

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/mem"
)

const segName = "000000010000000000000007"

func newRepo(t *testing.T, b storage.Backend, keys repo.Keys) *repo.Repository {
	t.Helper()
	ctx := context.Background()
	if _, err := repo.Init(ctx, b, repo.InitOptions{CompressionLevel: 1, Keys: keys, Now: time.Now()}); err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, b, repo.OpenOptions{Keys: keys, CompressionLevel: -1})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func segment(t *testing.T) pg.WALFile {
	wf, err := pg.ParseWALFileName(segName)
	if err != nil {
		t.Fatal(err)
	}
	return wf
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	// Half zeros so zstd has something to do.
	clear(b[n/2:])
	return b
}

func fetch(t *testing.T, r *repo.Repository, wf pg.WALFile) ([]byte, error) {
	t.Helper()
	obj, err := r.FetchWAL(context.Background(), wf)
	if err != nil {
		return nil, err
	}
	defer obj.Close()
	var buf bytes.Buffer
	_, err = obj.Decode(&buf)
	return buf.Bytes(), err
}

// PutWAL: the same content again is success and stores one object; other
// content under the name is refused and the stored file is untouched.
func TestPutWALIdenticalAndConflict(t *testing.T) {
	ctx := context.Background()
	b := mem.New()
	r := newRepo(t, b, repo.Keys{})
	wf := segment(t)
	data := random(1 << 20)
	if _, err := r.PutWAL(ctx, wf, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if _, err := r.PutWAL(ctx, wf, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("identical second push: %v", err)
	}
	other := random(1 << 20)
	_, err := r.PutWAL(ctx, wf, bytes.NewReader(other), int64(len(other)))
	if !errors.Is(err, repo.ErrWALConflict) {
		t.Fatalf("different content: %v, want ErrWALConflict", err)
	}
	if errors.Is(err, repo.ErrNotFound) || !strings.Contains(err.Error(), "archived sha256") {
		t.Fatalf("conflict message: %v", err)
	}
	got, err := fetch(t, r, wf)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after the refused push the archived file changed (%v)", err)
	}
	var wal []string
	for _, n := range b.Names() {
		if strings.HasPrefix(n, "wal/") {
			wal = append(wal, n)
		}
	}
	if len(wal) != 1 || wal[0] != repo.WALObjectName(wf) {
		t.Fatalf("objects under wal/: %q", wal)
	}
	ok, err := r.HasWAL(ctx, wf)
	if !ok || err != nil {
		t.Fatalf("HasWAL after push: %v %v", ok, err)
	}
	var listed []string
	if err := r.ListWAL(ctx, segName[:16], func(n string) error { listed = append(listed, n); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(listed) != 1 || listed[0] != segName {
		t.Fatalf("ListWAL: %q", listed)
	}
}

// A missing file is ErrNotFound for every call that looks for it, and
// HasWAL's plain "no".
func TestMissingWAL(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t, mem.New(), repo.Keys{})
	wf := segment(t)
	if _, err := r.FetchWAL(ctx, wf); !errors.Is(err, repo.ErrNotFound) || !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("fetch missing: %v", err)
	}
	if err := r.CompareWAL(ctx, wf, [32]byte{}, 1); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("compare missing: %v", err)
	}
	if ok, err := r.HasWAL(ctx, wf); ok || err != nil {
		t.Fatalf("HasWAL missing: %v %v", ok, err)
	}
	if err := r.ListWAL(ctx, "wal/x", func(string) error { return nil }); err == nil {
		t.Fatal("ListWAL took a path for a timeline and log")
	}
}

// A store that cannot answer is an error, never "missing".
func TestUnavailableIsNotMissing(t *testing.T) {
	ctx := context.Background()
	b := mem.New()
	r := newRepo(t, b, repo.Keys{})
	down := errors.New("connection refused")
	b.FailGet = func(name string) error {
		if strings.HasPrefix(name, "wal/") {
			return down
		}
		return nil
	}
	tr, err := repo.Open(ctx, storage.TagUnavailable(b), repo.OpenOptions{CompressionLevel: -1})
	if err != nil {
		t.Fatal(err)
	}
	for _, rr := range []*repo.Repository{r, tr} {
		if _, err := rr.FetchWAL(ctx, segment(t)); !errors.Is(err, down) || errors.Is(err, repo.ErrNotFound) {
			t.Fatalf("fetch with storage down: %v", err)
		}
		if ok, err := rr.HasWAL(ctx, segment(t)); ok || !errors.Is(err, down) {
			t.Fatalf("HasWAL with storage down: %v %v", ok, err)
		}
	}
	if _, err := tr.FetchWAL(ctx, segment(t)); !errors.Is(err, repo.ErrUnavailable) {
		t.Fatalf("tagged: %v, want ErrUnavailable", err)
	}
}

// A damaged archived file is a decode error (ErrCorrupt), not "missing",
// in the clear and encrypted; the wrong key is ErrWrongKey.
func TestCorruptWAL(t *testing.T) {
	ctx := context.Background()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	other, _ := age.GenerateX25519Identity()
	for name, keys := range map[string]repo.Keys{
		"plain":     {},
		"encrypted": {Recipients: []age.Recipient{id.Recipient()}, Identities: []age.Identity{id}},
	} {
		t.Run(name, func(t *testing.T) {
			b := mem.New()
			r := newRepo(t, b, keys)
			wf := segment(t)
			data := random(256 << 10)
			if _, err := r.PutWAL(ctx, wf, bytes.NewReader(data), int64(len(data))); err != nil {
				t.Fatal(err)
			}
			if keys.Identities != nil {
				wrong, err := repo.Open(ctx, b, repo.OpenOptions{Keys: repo.Keys{Recipients: keys.Recipients, Identities: []age.Identity{other}}, CompressionLevel: -1})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := fetch(t, wrong, wf); !errors.Is(err, repo.ErrWrongKey) {
					t.Fatalf("wrong key: %v", err)
				}
			}
			if !b.Corrupt(repo.WALObjectName(wf), 52+300) {
				t.Fatal("nothing to corrupt")
			}
			_, err := fetch(t, r, wf)
			if !errors.Is(err, repo.ErrCorrupt) || errors.Is(err, repo.ErrNotFound) {
				t.Fatalf("corrupt object: %v, want ErrCorrupt", err)
			}
		})
	}
}

// Large files stream through the codec instead of being decoded in memory.
func TestFetchLargeWAL(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t, mem.New(), repo.Keys{})
	wf := segment(t)
	data := random(65<<20 + 12345)
	if _, err := r.PutWAL(ctx, wf, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	got, err := fetch(t, r, wf)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("large file: %d bytes, %v", len(got), err)
	}
}

// Blocks written to a pack read back by range, and only a closed pack is
// stored.
func TestPackRoundTrip(t *testing.T) {
	ctx := context.Background()
	b := mem.New()
	r := newRepo(t, b, repo.Keys{})
	w := r.CreatePack(ctx, "20240101T000000Z", 0)
	var plains [][]byte
	var offs, lens []int64
	for i := range 3 {
		p := random(100<<10 + i)
		enc, err := r.EncodeBlock(nil, p)
		if err != nil {
			t.Fatal(err)
		}
		offs, lens = append(offs, w.Size()), append(lens, int64(len(enc)))
		if _, err := w.Write(enc); err != nil {
			t.Fatal(err)
		}
		plains = append(plains, p)
	}
	pack, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	if pack.Name != repo.PackName("20240101T000000Z", 0) || pack.Size != offs[2]+lens[2] {
		t.Fatalf("pack %+v", pack)
	}
	if _, err := b.Stat(ctx, pack.Name); err != nil {
		t.Fatalf("closed pack not stored: %v", err)
	}
	for i := range plains {
		rc, err := r.ReadPack(ctx, pack.Name, offs[i], lens[i], pack.Size)
		if err != nil {
			t.Fatal(err)
		}
		obj, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		plain, _, err := r.DecodeBlock(nil, obj)
		if err != nil || !bytes.Equal(plain, plains[i]) {
			t.Fatalf("block %d: %v", i, err)
		}
	}
	// The whole pack in one read.
	rc, err := r.ReadPack(ctx, pack.Name, 0, pack.Size, pack.Size)
	if err != nil {
		t.Fatal(err)
	}
	all, _ := io.ReadAll(rc)
	rc.Close()
	if int64(len(all)) != pack.Size {
		t.Fatalf("whole pack: %d bytes", len(all))
	}
	// A pack is created, never replaced.
	w2 := r.CreatePack(ctx, "20240101T000000Z", 0)
	w2.Write([]byte("other"))
	if _, err := w2.Close(); !errors.Is(err, repo.ErrExists) {
		t.Fatalf("second pack under the same name: %v", err)
	}
}

// failAfter is a backend whose Puts fail after reading n bytes of the
// body, the way a store that runs out of space or drops the connection
// mid-upload does.
type failAfter struct {
	storage.Backend
	n   int64
	err error
}

func (f failAfter) Put(ctx context.Context, name string, r io.Reader, o storage.PutOptions) error {
	if strings.Contains(name, "/pack/") {
		io.CopyN(io.Discard, r, f.n)
		return f.err
	}
	return f.Backend.Put(ctx, name, r, o)
}

// A put that fails mid-pack: the writer reports the store's error (not a
// closed pipe), keeps reporting it, and nothing is stored.
func TestPackFailingPutMidPack(t *testing.T) {
	ctx := context.Background()
	b := mem.New()
	boom := errors.New("no space left on device")
	r := newRepo(t, failAfter{Backend: b, n: 64 << 10, err: boom}, repo.Keys{})
	w := r.CreatePack(ctx, "20240101T000000Z", 3)
	var werr error
	for range 50 {
		if _, werr = w.Write(random(32 << 10)); werr != nil {
			break
		}
	}
	if !errors.Is(werr, boom) || !strings.Contains(werr.Error(), w.Name()) {
		t.Fatalf("write after the upload failed: %v, want the store's error naming the pack", werr)
	}
	if _, err := w.Write([]byte("x")); !errors.Is(err, boom) {
		t.Fatalf("write after failure: %v", err)
	}
	if _, err := w.Close(); !errors.Is(err, boom) {
		t.Fatalf("close after failure: %v", err)
	}
	for _, n := range b.Names() {
		if strings.Contains(n, "/pack/") {
			t.Fatalf("failed pack stored: %s", n)
		}
	}
	// The store refusing at the end (FailPut runs before publishing).
	b.FailPut = func(string) error { return boom }
	w = r.CreatePack(ctx, "20240101T000000Z", 4)
	if _, err := w.Write(random(1000)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Close(); !errors.Is(err, boom) {
		t.Fatalf("close with the final put refused: %v", err)
	}
	if len(b.Names()) != 1 { // config.json
		t.Fatalf("objects after failed packs: %q", b.Names())
	}
}

// Cancellation: a pack whose context ends stores nothing, an aborted pack
// stores nothing, and a push with a cancelled context stores nothing.
func TestCancellation(t *testing.T) {
	b := mem.New()
	r := newRepo(t, b, repo.Keys{})
	ctx, cancel := context.WithCancel(context.Background())
	w := r.CreatePack(ctx, "20240101T000000Z", 0)
	if _, err := w.Write(random(1000)); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := w.Close(); !errors.Is(err, context.Canceled) {
		t.Fatalf("close after cancel: %v", err)
	}
	w = r.CreatePack(context.Background(), "20240101T000000Z", 1)
	w.Write(random(1000))
	w.Abort(errors.New("backup failed elsewhere"))
	if _, err := w.Close(); err == nil {
		t.Fatal("close after abort succeeded")
	}
	data := random(1 << 20)
	if _, err := r.PutWAL(ctx, segment(t), bytes.NewReader(data), int64(len(data))); err == nil {
		t.Fatal("push with a cancelled context succeeded")
	}
	if names := b.Names(); len(names) != 1 {
		t.Fatalf("objects after cancelled writes: %q", names)
	}
}

package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/pgkeep/pgkeep/storage"
)

func writeTemp(t *testing.T, data []byte) *os.File {
	t.Helper()
	p := filepath.Join(t.TempDir(), "seg")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// A mapped file streams to exactly the object the in-memory encoder's
// reader decodes, at and between frame boundaries, plain and encrypted.
func TestPutFileRoundTrip(t *testing.T) {
	for name, c := range codecs(t) {
		if c.Level == 0 {
			continue // not mapped: PutReader reads uncompressed files
		}
		for _, size := range []int{1, mappedFrame, mappedFrame + 1, 16 << 20, 5*mappedFrame - 3} {
			plain := walLike(size)
			f := writeTemp(t, plain)
			r := &Repository{codec: c}
			var obj bytes.Buffer
			sum, err := r.putFile("x", f, int64(size), func(body io.Reader) error {
				_, err := io.Copy(&obj, body)
				return err
			})
			if err != nil {
				t.Fatalf("%s/%d: %v", name, size, err)
			}
			if sum != sha256.Sum256(plain) {
				t.Fatalf("%s/%d: wrong sum", name, size)
			}
			got, h, err := c.DecodeBlock(obj.Bytes())
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("%s/%d: decode: %v", name, size, err)
			}
			if h.SHA256 != sum || h.Size != int64(size) || h.Encrypted != (len(c.Recipients) > 0) {
				t.Fatalf("%s/%d: header %+v", name, size, h)
			}
			var out bytes.Buffer
			if _, err := c.Decode(&out, bytes.NewReader(obj.Bytes())); err != nil || !bytes.Equal(out.Bytes(), plain) {
				t.Fatalf("%s/%d: streaming decode: %v", name, size, err)
			}
		}
	}
}

// A backend that answers before reading (the name is taken) still gets the
// file's checksum back, so wal-push can compare it with the stored one; a
// backend that fails midway gets its error back and nothing hangs.
func TestPutFileEarlyAnswer(t *testing.T) {
	c := &Codec{Level: 1}
	plain := walLike(16 << 20)
	f := writeTemp(t, plain)
	r := &Repository{codec: c}
	taken := errors.New("taken")
	sum, err := r.putFile("x", f, int64(len(plain)), func(io.Reader) error { return taken })
	if !errors.Is(err, taken) || sum != sha256.Sum256(plain) {
		t.Fatalf("got %v, sum ok %v", err, sum == sha256.Sum256(plain))
	}
	broken := errors.New("disk full")
	_, err = r.putFile("x", f, int64(len(plain)), func(body io.Reader) error {
		io.CopyN(io.Discard, body, 3<<20)
		return broken
	})
	if !errors.Is(err, broken) {
		t.Fatalf("got %v, want the backend's error", err)
	}
}

// A file shorter than announced (truncated after it was opened) is an
// error, not a crash: reading past its end faults inside the mapping.
// A shrink within the last page reads as zeros rather than faulting, and
// is caught by the size check before the object completes.
func TestPutFileShrunk(t *testing.T) {
	c := &Codec{Level: 1}
	for _, keep := range []int64{1 << 20, 4<<20 - 100} {
		plain := walLike(4 << 20)
		f := writeTemp(t, plain)
		if err := os.Truncate(f.Name(), keep); err != nil {
			t.Fatal(err)
		}
		r := &Repository{codec: c}
		completed := false
		_, err := r.putFile("x", f, int64(len(plain)), func(body io.Reader) error {
			_, err := io.Copy(io.Discard, body)
			completed = err == nil
			return err
		})
		if !errors.Is(err, errShrunk) || completed {
			t.Fatalf("shrunk to %d: err %v, object completed %v", keep, err, completed)
		}
	}
}

// PutReader maps a regular file and reads anything else (here a pipe,
// which cannot be mapped): both store the same content.
func TestPutReaderFileAndPipe(t *testing.T) {
	r := testRepo(t)
	if r.codec.Level <= 0 {
		t.Fatal("test repository does not compress: the mapped path is not taken")
	}
	ctx := context.Background()
	plain := walLike(3<<20 + 5)
	f := writeTemp(t, plain)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		pw.Write(plain)
		pw.Close()
	}()
	defer pr.Close()
	for name, src := range map[string]*os.File{"file": f, "pipe": pr} {
		sum, err := r.PutReader(ctx, name, src, int64(len(plain)), storage.PutOptions{IfAbsent: true})
		if err != nil || sum != sha256.Sum256(plain) {
			t.Fatalf("%s: %v", name, err)
		}
		var out bytes.Buffer
		if _, err := r.GetObject(ctx, name, &out); err != nil || !bytes.Equal(out.Bytes(), plain) {
			t.Fatalf("%s: stored content differs: %v", name, err)
		}
	}
}

package repo

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/pgkeep/pgkeep/storage"
)

// A base backup's file content travels as blocks (EncodeBlock), each a
// whole object through the codec, concatenated into packs that are
// streamed to the store as they fill (PackWriter) and read back by range
// (ReadPack).

// EncodeBlock appends the object for plain to dst (reused when large
// enough) and returns it.
func (r *Repository) EncodeBlock(dst, plain []byte) ([]byte, error) {
	return r.codec.EncodeBlock(dst, plain)
}

// DecodeBlock decodes one block read from a pack into dst's storage when
// it is large enough, trusting the zstd frames' own content checksums
// (verify re-checks SHA-256). A damaged block gives an error wrapping
// ErrCorrupt; a block the configured keys cannot open, ErrWrongKey or
// ErrNoIdentity.
func (r *Repository) DecodeBlock(dst, obj []byte) ([]byte, Header, error) {
	return r.codec.DecodeBlockTo(dst, obj, false)
}

// PackWriter streams one pack of backup id to the store while blocks are
// appended to it. The pack is created, never replaced, and is visible only
// once Close returned nil; a failed or aborted pack leaves nothing.
type PackWriter struct {
	name   string
	pw     *io.PipeWriter
	result chan error
	size   int64
	done   bool
	err    error
}

// CreatePack starts pack n of backup id; ctx bounds the upload.
func (r *Repository) CreatePack(ctx context.Context, id string, n int) *PackWriter {
	w := &PackWriter{name: PackName(id, n), result: make(chan error, 1)}
	pr, pw := io.Pipe()
	w.pw = pw
	go func() {
		err := r.backend.Put(ctx, w.name, pr, storage.PutOptions{IfAbsent: true})
		pr.CloseWithError(errors.New("upload stopped"))
		w.result <- err
	}()
	return w
}

// Name is the pack's object name.
func (w *PackWriter) Name() string { return w.name }

// Size is the number of bytes written so far: the offset of the next block.
func (w *PackWriter) Size() int64 { return w.size }

// Write appends encoded blocks. When the upload has failed it returns the
// upload's error (ENOSPC, connection refused), not the closed pipe's, and
// the pack is finished: Close returns the same error.
func (w *PackWriter) Write(p []byte) (int, error) {
	if w.done {
		return 0, w.err
	}
	n, err := w.pw.Write(p)
	w.size += int64(n)
	if err != nil {
		w.pw.CloseWithError(err)
		if perr := <-w.result; perr != nil {
			err = perr
		}
		w.done, w.err = true, fmt.Errorf("upload %s: %w", w.name, err)
		return n, w.err
	}
	return n, nil
}

// Close finishes the upload and returns the pack for the manifest once it
// is durably stored.
func (w *PackWriter) Close() (Pack, error) {
	if w.done {
		return Pack{}, w.err
	}
	w.done = true
	w.pw.Close()
	if err := <-w.result; err != nil {
		w.err = fmt.Errorf("upload %s: %w", w.name, err)
		return Pack{}, w.err
	}
	return Pack{Name: w.name, Size: w.size}, nil
}

// Abort gives up on the pack: the upload is failed with cause and nothing
// is stored under the name. It waits for the upload to end.
func (w *PackWriter) Abort(cause error) {
	if w.done {
		return
	}
	w.done, w.err = true, fmt.Errorf("upload %s: %w", w.name, cause)
	w.pw.CloseWithError(cause)
	<-w.result
}

// ReadPack opens length bytes of the pack name (packSize bytes long)
// from offset: one plain read when that is the whole pack, else a range.
func (r *Repository) ReadPack(ctx context.Context, name string, offset, length, packSize int64) (io.ReadCloser, error) {
	if offset == 0 && length == packSize {
		return r.backend.Get(ctx, name)
	}
	return r.backend.GetRange(ctx, name, offset, length)
}

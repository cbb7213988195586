package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/storage"
)

// The archived WAL of the repository: what wal-push, wal-fetch, the
// prefetch, restore's bulk download and a backup's WAL wait need, by
// purpose. Every object goes through the codec; the names are
// WALObjectName's.

// ErrWALConflict means the repository already holds a different file under
// the name being pushed. The stored file is never replaced.
var ErrWALConflict = errors.New("a different file with this name is already archived; refusing to overwrite it")

// PutWAL archives wf's content, exactly size bytes read from src, and
// returns its SHA-256. The name is only ever created, never replaced: if
// it is taken by the very same content (a retried or concurrent push) that
// is success; by different content the answer is an error wrapping
// ErrWALConflict and the stored file is untouched. A regular *os.File is
// mapped rather than read, from its start (pass a freshly opened file).
func (r *Repository) PutWAL(ctx context.Context, wf pg.WALFile, src io.Reader, size int64) ([32]byte, error) {
	sum, err := r.PutReader(ctx, WALObjectName(wf), src, size, storage.PutOptions{IfAbsent: true})
	return r.settleWALPut(ctx, wf, sum, size, err)
}

// CompareWAL checks the archived copy of wf against content of the given
// SHA-256 and size, reading only its plaintext header (no key needed): nil
// if they are the same, an error wrapping ErrWALConflict if not, one
// wrapping ErrNotFound if nothing is archived under the name.
func (r *Repository) CompareWAL(ctx context.Context, wf pg.WALFile, sum [32]byte, size int64) error {
	h, err := r.Header(ctx, WALObjectName(wf))
	if errors.Is(err, ErrNotFound) {
		return err
	}
	if err != nil {
		return fmt.Errorf("check archived copy: %w", err)
	}
	if h.SHA256 != sum || h.Size != size {
		return fmt.Errorf("%w (archived sha256 %x…, %d bytes; local sha256 %x…, %d bytes)",
			ErrWALConflict, h.SHA256[:6], h.Size, sum[:6], size)
	}
	return nil
}

// HasWAL reports whether wf is archived. Only an answer of the store is
// "no"; any other failure is an error.
func (r *Repository) HasWAL(ctx context.Context, wf pg.WALFile) (bool, error) {
	_, err := r.backend.Stat(ctx, WALObjectName(wf))
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// ListWAL calls fn with the name of every file archived under one
// timeline-and-log directory (the first 16 hex digits of a segment name,
// e.g. "0000000100000003"), in lexical order. Block maps and roll-ups
// stored beside the WAL are not WAL files and are left out. An error from
// fn stops the listing and is returned.
func (r *Repository) ListWAL(ctx context.Context, timelineLog string, fn func(name string) error) error {
	if len(timelineLog) != 16 || strings.Contains(timelineLog, "/") {
		return fmt.Errorf("list WAL: %q is not a timeline and log (16 hex digits)", timelineLog)
	}
	return r.backend.List(ctx, "wal/"+timelineLog+"/", func(o storage.ObjectInfo) error {
		name := o.Name[strings.LastIndexByte(o.Name, '/')+1:]
		if IsWALMapName(name) {
			return nil
		}
		return fn(name)
	})
}

// FetchWAL opens the archived wf for decoding. A file that is not
// archived gives an error wrapping ErrNotFound; nothing else does.
func (r *Repository) FetchWAL(ctx context.Context, wf pg.WALFile) (*WALReader, error) {
	rc, err := r.backend.Get(ctx, WALObjectName(wf))
	if err != nil {
		return nil, err
	}
	return &WALReader{r: r, rc: rc}, nil
}

// WALReader is an archived WAL file being fetched.
type WALReader struct {
	r  *Repository
	rc io.ReadCloser
}

// inMemoryWAL bounds the objects Decode decodes in memory, archived and
// plain: every WAL segment size up to 64 MiB.
const inMemoryWAL = 64 << 20

// Decode writes the file's plain content to dst and returns its header.
// Up to inMemoryWAL it decodes in memory, trusting the zstd frames'
// content checksums as restore does (no second pass over the segment with
// SHA-256), and hands dst the whole content in one Write; larger objects
// stream through the codec, which checks the SHA-256. On error dst may
// hold a prefix and must be discarded; a damaged object gives an error
// wrapping ErrCorrupt, never ErrNotFound.
func (w *WALReader) Decode(dst io.Writer) (Header, error) {
	obj, err := io.ReadAll(io.LimitReader(w.rc, inMemoryWAL+1))
	if err != nil {
		return Header{}, fmt.Errorf("read: %w", err)
	}
	if h, err := ReadHeader(bytes.NewReader(obj)); err != nil || len(obj) > inMemoryWAL || h.Size > inMemoryWAL {
		return w.r.codec.Decode(dst, io.MultiReader(bytes.NewReader(obj), w.rc))
	}
	plain, h, err := w.r.codec.DecodeBlockTo(nil, obj, false)
	if err != nil {
		return h, err
	}
	if _, err := dst.Write(plain); err != nil {
		return h, err
	}
	return h, nil
}

// Close ends the download.
func (w *WALReader) Close() error { return w.rc.Close() }

package repo

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sync"
	"syscall"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
)

// mappedFrame is the zstd frame size for a mapped file: small enough that
// each worker's encoder and the output ring touch little fresh memory
// (page faults are a large part of a short-lived wal-push on some VMs),
// large enough to cost nothing measurable in ratio on WAL.
const mappedFrame = 1 << 20

var (
	errUploadEnded = errors.New("upload ended")
	errShrunk      = errors.New("the file shrank while it was being read")
	// errNotMapped: the file could not be mapped (a filesystem without
	// mmap); the caller reads it instead.
	errNotMapped = errors.New("file cannot be mapped")
)

// putFile stores the regular file f of size bytes under name and returns
// its SHA-256. The file is mapped rather than read (a WAL segment
// PostgreSQL just wrote is in the page cache: no 16 MiB buffer to fault in
// and copy), hashed on one goroutine while workers compress it in
// mappedFrame frames, and streamed to the backend in order through a small
// ring of reused buffers: the header as soon as the hash is known, then
// each frame as it is ready. putFileInspect's non-nil inspect is handed the mapped bytes
// on a goroutine of its own, beside hashing and compression (wal-push
// builds a segment's block map from them), with a call that waits for
// their hash; it has returned by the time putFile does, and a fault while
// it reads (the file shrank) ends it early.
func (r *Repository) putFile(name string, f *os.File, size int64, put func(io.Reader) error) ([32]byte, error) {
	return r.putFileInspect(name, f, size, put, nil)
}

func (r *Repository) putFileInspect(name string, f *os.File, size int64, put func(io.Reader) error, inspect func(data []byte, hashed func() ([32]byte, bool))) ([32]byte, error) {
	c := r.codec
	data, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED|syscall.MAP_POPULATE)
	if err != nil {
		return [32]byte{}, fmt.Errorf("%w: %v", errNotMapped, err)
	}
	defer syscall.Munmap(data)

	var sum [32]byte
	var sumErr error
	sumDone := make(chan struct{})
	go func() {
		defer close(sumDone)
		sumErr = guardFault(func() { sum = sha256.Sum256(data) })
	}()
	inspectDone := make(chan struct{})
	go func() {
		defer close(inspectDone)
		if inspect != nil {
			hashed := func() ([32]byte, bool) {
				<-sumDone
				return sum, sumErr == nil
			}
			guardFault(func() { inspect(data, hashed) })
		}
	}()
	defer func() { <-inspectDone }() // before the unmap

	type result struct {
		buf []byte
		err error
	}
	n := (len(data) + mappedFrame - 1) / mappedFrame
	workers := max(min(c.concurrency(), n), 1)
	ring := make(chan []byte, workers+2)
	for range cap(ring) {
		// Room for 2:1; less compressible frames grow their buffer once.
		ring <- make([]byte, 0, mappedFrame/2)
	}
	slots := make([]chan result, n)
	for i := range slots {
		slots[i] = make(chan result, 1)
	}
	stop := make(chan struct{})
	var mu sync.Mutex
	next := 0
	var wg sync.WaitGroup
	pool := encoderPool(c.Level)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			enc := pool.Get().(*zstd.Encoder)
			faulted := false
			defer func() {
				// An encoder interrupted by a fault may hold broken state.
				if !faulted {
					pool.Put(enc)
				}
			}()
			for {
				// Frames take buffers in frame order, so the lowest frame
				// not yet written always has one: the ring cannot deadlock.
				mu.Lock()
				i := next
				if i >= n {
					mu.Unlock()
					return
				}
				next++
				var buf []byte
				select {
				case buf = <-ring:
				case <-stop:
					mu.Unlock()
					return
				}
				mu.Unlock()
				piece := data[i*mappedFrame : min((i+1)*mappedFrame, len(data))]
				err := guardFault(func() { buf = enc.EncodeAll(piece, buf[:0]) })
				slots[i] <- result{buf, err}
				if err != nil {
					faulted = true
					return
				}
			}
		}()
	}

	pr, pw := io.Pipe()
	wg.Add(1)
	go func() {
		defer wg.Done()
		pw.CloseWithError(func() error {
			select {
			case <-sumDone:
			case <-stop:
				return errUploadEnded
			}
			if sumErr != nil {
				return sumErr
			}
			h := Header{Compressed: true, Encrypted: len(c.Recipients) > 0, Size: size, SHA256: sum}
			if _, err := pw.Write(h.marshal()); err != nil {
				return err
			}
			var w io.Writer = pw
			var aw io.WriteCloser
			if h.Encrypted {
				var err error
				if aw, err = age.Encrypt(pw, c.Recipients...); err != nil {
					return fmt.Errorf("encrypt: %w", err)
				}
				w = aw
			}
			for i := range n {
				var res result
				select {
				case res = <-slots[i]:
				case <-stop:
					return errUploadEnded
				}
				if res.err != nil {
					return res.err
				}
				if _, err := w.Write(res.buf); err != nil {
					return err
				}
				ring <- res.buf
			}
			// Reading a mapped file past a shrunk end faults, except in its
			// last page, which reads as zeros: check the size before the
			// object can be completed.
			if fi, err := f.Stat(); err != nil || fi.Size() < size {
				return errShrunk
			}
			if aw != nil {
				return aw.Close()
			}
			return nil
		}())
	}()

	err = put(pr)
	pr.CloseWithError(errUploadEnded)
	close(stop)
	wg.Wait()
	<-sumDone
	if sumErr != nil {
		return sum, fmt.Errorf("read %s: %w", name, sumErr)
	}
	return sum, err
}

// guardFault runs fn and turns a memory fault in it into an error: reading
// a mapped file that was truncated meanwhile raises SIGBUS, which must not
// take the process down with a crash report.
func guardFault(fn func()) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(interface{ Addr() uintptr }); ok {
				err = errShrunk
				return
			}
			panic(r)
		}
	}()
	fn()
	return nil
}

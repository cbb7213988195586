package repo

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
)

// Blocks are whole objects (header + body) held in memory: base backups
// cut files into blocks and concatenate them into packs. Encoding a block
// uses a pooled single-threaded zstd encoder, since parallelism comes from
// encoding many blocks at once, and creating an encoder per small file
// would cost more than compressing it.

var (
	encPools sync.Map // level -> *sync.Pool of *zstd.Encoder
	decPool  = sync.Pool{New: func() any {
		d, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(1<<27), zstd.WithDecoderMaxMemory(1<<31))
		return d
	}}
)

func encoderPool(level int) *sync.Pool {
	if p, ok := encPools.Load(level); ok {
		return p.(*sync.Pool)
	}
	p := &sync.Pool{New: func() any {
		e, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(level)),
			zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(true), zstd.WithWindowSize(1<<22))
		return e
	}}
	actual, _ := encPools.LoadOrStore(level, p)
	return actual.(*sync.Pool)
}

// EncodeBlock appends the object for plain to dst and returns it with the
// plain content's SHA-256.
func (c *Codec) EncodeBlock(dst []byte, plain []byte) ([]byte, [32]byte, error) {
	sum := sha256.Sum256(plain)
	h := Header{Compressed: c.Level > 0, Encrypted: len(c.Recipients) > 0, Size: int64(len(plain)), SHA256: sum}
	dst = append(dst, h.marshal()...)
	body := plain
	if h.Compressed {
		pool := encoderPool(c.Level)
		enc := pool.Get().(*zstd.Encoder)
		body = enc.EncodeAll(plain, make([]byte, 0, len(plain)/2+64))
		pool.Put(enc)
	}
	if !h.Encrypted {
		return append(dst, body...), sum, nil
	}
	buf := bytes.NewBuffer(dst)
	w, err := age.Encrypt(buf, c.Recipients...)
	if err != nil {
		return nil, sum, fmt.Errorf("encrypt: %w", err)
	}
	if _, err := w.Write(body); err != nil {
		return nil, sum, err
	}
	if err := w.Close(); err != nil {
		return nil, sum, err
	}
	return buf.Bytes(), sum, nil
}

// DecodeBlock decodes one in-memory object, verifying size and checksum.
func (c *Codec) DecodeBlock(obj []byte) ([]byte, Header, error) {
	h, err := ReadHeader(bytes.NewReader(obj))
	if err != nil {
		return nil, h, err
	}
	body := obj[headerSize:]
	if h.Encrypted {
		if len(c.Identities) == 0 {
			return nil, h, ErrNoIdentity
		}
		r, err := age.Decrypt(bytes.NewReader(body), c.Identities...)
		if err != nil {
			var nm *age.NoIdentityMatchError
			if errors.As(err, &nm) {
				return nil, h, ErrWrongKey
			}
			return nil, h, fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		body, err = io.ReadAll(r)
		if err != nil {
			return nil, h, fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
	}
	plain := body
	if h.Compressed {
		if h.Size > 1<<31 {
			return nil, h, fmt.Errorf("%w: block of %d bytes", ErrCorrupt, h.Size)
		}
		dec := decPool.Get().(*zstd.Decoder)
		plain, err = dec.DecodeAll(body, make([]byte, 0, h.Size))
		decPool.Put(dec)
		if err != nil {
			return nil, h, fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
	} else if !h.Encrypted {
		plain = append([]byte(nil), body...)
	}
	if int64(len(plain)) != h.Size || sha256.Sum256(plain) != h.SHA256 {
		return nil, h, fmt.Errorf("%w: content does not match its checksum", ErrCorrupt)
	}
	return plain, h, nil
}

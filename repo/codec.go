package repo

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"runtime"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/xxh3"
)

// Every stored object starts with a small plaintext header (docs/format.md):
//
//	0  4  magic "PGKO"
//	4  1  header version (1)
//	5  1  flags: bit 0 zstd, bit 1 age, bit 2 the sum is xxh3-128
//	6  2  reserved, zero
//	8  8  plain size, big endian
//	16 32 SHA-256 of the plain bytes (bit 2: their xxh3-128, then zeros)
//	48 4  CRC-32C of bytes 0..47, big endian
//
// The header lets wal-push tell a duplicate from a conflicting segment, and
// verify tell corruption, without the decryption key. Block objects (the
// packs' chunks, EncodeBlock) carry xxh3-128: their blocks' own hashes and
// zstd's frame checksums already cover the bytes, and a SHA-256 of every
// stored byte was 15 % of a full backup's CPU (repository format 5).
const (
	headerSize    = 52
	headerVersion = 1
	flagZstd      = 1 << 0
	flagAge       = 1 << 1
	flagXXH3      = 1 << 2
)

var objectMagic = [4]byte{'P', 'G', 'K', 'O'}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Errors a caller can tell apart with errors.Is.
var (
	ErrCorrupt    = errors.New("object is corrupt or truncated")
	ErrWrongKey   = errors.New("no configured age identity can decrypt the object (wrong key?)")
	ErrNoIdentity = errors.New("object is encrypted and no age identity is configured (encryption.identity_file or encryption.passphrase_file)")
)

// Header is the plaintext description of an object's content.
type Header struct {
	Compressed bool
	Encrypted  bool
	Size       int64 // plain size
	// SHA256 is the SHA-256 of the plain bytes, or with XXH3 their
	// xxh3-128 (big endian) in its first 16 bytes, the rest zero.
	SHA256 [32]byte
	XXH3   bool
}

// sumOf is plain's content sum the way h records it.
func (h Header) sumOf(plain []byte) [32]byte {
	if h.XXH3 {
		return xxh3Sum(plain)
	}
	return sha256.Sum256(plain)
}

// newHash hashes a streamed body the way h records its sum.
func (h Header) newHash() hash.Hash {
	if h.XXH3 {
		return &xxh3Hash{xxh3.New()}
	}
	return sha256.New()
}

// xxh3Sum is a header's xxh3-128 sum of plain.
func xxh3Sum(plain []byte) [32]byte {
	var s [32]byte
	b := xxh3.Hash128(plain).Bytes()
	copy(s[:], b[:])
	return s
}

// xxh3Hash is a hash.Hash whose Sum is a header's 32-byte xxh3-128 sum.
type xxh3Hash struct{ *xxh3.Hasher }

func (x *xxh3Hash) Size() int { return 32 }
func (x *xxh3Hash) Sum(b []byte) []byte {
	var s [32]byte
	v := x.Sum128().Bytes()
	copy(s[:], v[:])
	return append(b, s[:]...)
}

func (h Header) marshal() []byte {
	b := make([]byte, headerSize)
	copy(b, objectMagic[:])
	b[4] = headerVersion
	if h.Compressed {
		b[5] |= flagZstd
	}
	if h.Encrypted {
		b[5] |= flagAge
	}
	if h.XXH3 {
		b[5] |= flagXXH3
	}
	binary.BigEndian.PutUint64(b[8:], uint64(h.Size))
	copy(b[16:48], h.SHA256[:])
	binary.BigEndian.PutUint32(b[48:], crc32.Checksum(b[:48], crcTable))
	return b
}

// ReadHeader reads and checks an object header.
func ReadHeader(r io.Reader) (Header, error) {
	var b [headerSize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return Header{}, fmt.Errorf("%w: header: %v", ErrCorrupt, err)
	}
	if !bytes.Equal(b[:4], objectMagic[:]) {
		return Header{}, fmt.Errorf("%w: not a pgkeep object (bad magic)", ErrCorrupt)
	}
	if binary.BigEndian.Uint32(b[48:]) != crc32.Checksum(b[:48], crcTable) {
		return Header{}, fmt.Errorf("%w: header checksum mismatch", ErrCorrupt)
	}
	if b[4] != headerVersion {
		return Header{}, fmt.Errorf("object header version %d is not supported by this pgkeep (knows %d)", b[4], headerVersion)
	}
	if b[5]&^(flagZstd|flagAge|flagXXH3) != 0 {
		return Header{}, fmt.Errorf("object header has unknown flags %#x", b[5])
	}
	h := Header{
		Compressed: b[5]&flagZstd != 0,
		Encrypted:  b[5]&flagAge != 0,
		XXH3:       b[5]&flagXXH3 != 0,
		Size:       int64(binary.BigEndian.Uint64(b[8:])),
	}
	copy(h.SHA256[:], b[16:48])
	if h.Size < 0 {
		return Header{}, fmt.Errorf("%w: negative size", ErrCorrupt)
	}
	return h, nil
}

// Codec turns plain bytes into stored objects and back: zstd, then age.
type Codec struct {
	// Level is the zstd level (1..22 in zstd's terms; 0 disables compression).
	Level int
	// Recipients encrypt new objects; empty means objects are stored in the clear.
	Recipients []age.Recipient
	// Identities decrypt objects.
	Identities []age.Identity
	// Concurrency bounds the goroutines zstd uses for one stream (0 = GOMAXPROCS).
	Concurrency int
}

func (c *Codec) concurrency() int {
	if c.Concurrency > 0 {
		return c.Concurrency
	}
	return runtime.GOMAXPROCS(0)
}

// Encode writes the object for plain content src (exactly size bytes whose
// SHA-256 is sum) to dst. The caller knows the sum up front because the
// header comes first; a mismatch with what src actually yields is an error,
// so a file that changed under us is never stored with a wrong header.
func (c *Codec) Encode(dst io.Writer, src io.Reader, size int64, sum [32]byte) error {
	h := Header{Compressed: c.Level > 0, Encrypted: len(c.Recipients) > 0, Size: size, SHA256: sum}
	if _, err := dst.Write(h.marshal()); err != nil {
		return err
	}
	var w io.Writer = dst
	var closers []io.Closer
	if h.Encrypted {
		aw, err := age.Encrypt(dst, c.Recipients...)
		if err != nil {
			return fmt.Errorf("encrypt: %w", err)
		}
		w = aw
		closers = append(closers, aw)
	}
	if h.Compressed {
		zw, err := zstd.NewWriter(w,
			zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(c.Level)),
			zstd.WithEncoderConcurrency(c.concurrency()),
			zstd.WithEncoderCRC(true),
			zstd.WithWindowSize(windowSize))
		if err != nil {
			return fmt.Errorf("compress: %w", err)
		}
		w = zw
		closers = append([]io.Closer{zw}, closers...)
	}
	hs := h.newHash()
	n, err := io.Copy(w, io.TeeReader(src, hs))
	if err != nil {
		return err
	}
	for _, cl := range closers {
		if err := cl.Close(); err != nil {
			return err
		}
	}
	if n != size || !bytes.Equal(hs.Sum(nil), sum[:]) {
		return fmt.Errorf("content changed while it was being stored (read %d bytes, expected %d)", n, size)
	}
	return nil
}

// EncodeBytes is Encode for content already in memory.
func (c *Codec) EncodeBytes(dst io.Writer, plain []byte) error {
	return c.Encode(dst, bytes.NewReader(plain), int64(len(plain)), sha256.Sum256(plain))
}

// Decode reads an object from src and writes its plain content to dst. It
// returns only after the content's size and SHA-256 matched the header; on
// any error dst may hold a prefix and must be discarded by the caller.
func (c *Codec) Decode(dst io.Writer, src io.Reader) (Header, error) {
	br := bufio.NewReaderSize(src, 256<<10)
	h, err := ReadHeader(br)
	if err != nil {
		return h, err
	}
	var r io.Reader = br
	if h.Encrypted {
		if len(c.Identities) == 0 {
			return h, ErrNoIdentity
		}
		ar, err := age.Decrypt(br, c.Identities...)
		if err != nil {
			var nm *age.NoIdentityMatchError
			if errors.As(err, &nm) {
				return h, ErrWrongKey
			}
			return h, fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		r = ar
	}
	if h.Compressed {
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(c.concurrency()), zstd.WithDecoderMaxWindow(1<<27))
		if err != nil {
			return h, fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		defer zr.Close()
		r = zr
	}
	hs := h.newHash()
	n, err := io.Copy(io.MultiWriter(destWriter{dst}, hs), r)
	if err != nil {
		var we *writeError
		if errors.As(err, &we) {
			return h, we.err
		}
		return h, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if n != h.Size || !bytes.Equal(hs.Sum(nil), h.SHA256[:]) {
		return h, fmt.Errorf("%w: content does not match its checksum (%d of %d bytes)", ErrCorrupt, n, h.Size)
	}
	return h, nil
}

// writeError marks an error that came from the destination, not the object,
// so a full disk is not reported as a corrupt object.
type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }

type destWriter struct{ w io.Writer }

func (d destWriter) Write(p []byte) (int, error) {
	n, err := d.w.Write(p)
	if err != nil {
		err = &writeError{err}
	}
	return n, err
}

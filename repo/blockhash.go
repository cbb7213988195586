package repo

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"

	"github.com/zeebo/xxh3"
)

// Block hashes (docs/format.md, "format 3"): the blocks of a file cut into
// small blocks are hashed with xxh3-128, about 30 times faster than
// SHA-256 here (the chunk object's header still carries the SHA-256 of
// what is stored, for outside readers); whole blocks keep SHA-256. A block
// hash is only ever compared with the hash of the block at the same offset
// of the same file (reuse, delta restore, verify), never used to find
// content.

// BlockDigest is the hash of a block's plain content: xxh3-128 (16 bytes,
// big endian) for a file with small blocks, else SHA-256.
func BlockDigest(small bool, plain []byte) []byte {
	if small {
		b := xxh3.Hash128(plain).Bytes()
		return b[:]
	}
	s := sha256.Sum256(plain)
	return s[:]
}

// Digest is the block's recorded hash in hex ("" when the manifest has
// none).
func (b BlockRef) Digest() string {
	if b.XXH3 != "" {
		return b.XXH3
	}
	return b.SHA256
}

// SetDigest records d, made by BlockDigest, as the block's hash.
func (b *BlockRef) SetDigest(small bool, d []byte) {
	if small {
		b.XXH3 = hex.EncodeToString(d)
	} else {
		b.SHA256 = hex.EncodeToString(d)
	}
}

// DigestIs reports whether plain has the block's recorded hash.
func (b BlockRef) DigestIs(plain []byte) bool {
	return hex.EncodeToString(BlockDigest(b.XXH3 != "", plain)) == b.Digest()
}

// LocalFileChecksum computes f's manifest checksum from a local copy (the
// SHA-256 of its block hashes, docs/format.md), so delta restore can
// compare files without downloading them.
func (m *Manifest) LocalFileChecksum(path string, f *File) (string, int64, error) {
	if f.BlockSize == 0 {
		return FileChecksum(path, m.BlockSize)
	}
	fh, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer fh.Close()
	outer := sha256.New()
	buf := make([]byte, f.BlockSize)
	var size int64
	for {
		n, err := io.ReadFull(fh, buf)
		if n > 0 {
			outer.Write(BlockDigest(true, buf[:n]))
			size += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return "", 0, err
		}
	}
	return hex.EncodeToString(outer.Sum(nil)), size, nil
}

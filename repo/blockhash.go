package repo

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
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

// HashKind is which hash a block records.
type HashKind uint8

const (
	NoHash     HashKind = iota // manifests written before incrementals, composites
	HashSHA256                 // SHA-256, 32 bytes
	HashXXH3                   // xxh3-128, 16 bytes big endian
)

// size is the hash's length in bytes.
func (k HashKind) size() int {
	switch k {
	case HashSHA256:
		return 32
	case HashXXH3:
		return 16
	}
	return 0
}

// HasDigest reports whether the block records a hash.
func (b BlockRef) HasDigest() bool { return b.Hash != NoHash }

// Small reports whether the block's hash is xxh3-128 (a file with small
// blocks).
func (b BlockRef) Small() bool { return b.Hash == HashXXH3 }

// DigestBytes is the block's recorded hash (empty when none).
func (b *BlockRef) DigestBytes() []byte { return b.Sum[:b.Hash.size()] }

// Digest is the block's recorded hash in hex ("" when the manifest has
// none), for messages and JSON.
func (b BlockRef) Digest() string { return hex.EncodeToString(b.Sum[:b.Hash.size()]) }

// SameDigest reports whether b and o record the same hash (or both none).
func (b BlockRef) SameDigest(o BlockRef) bool { return b.Hash == o.Hash && b.Sum == o.Sum }

// SetDigest records d, made by BlockDigest, as the block's hash.
func (b *BlockRef) SetDigest(small bool, d []byte) {
	b.Sum = [32]byte{}
	b.Hash = HashSHA256
	if small {
		b.Hash = HashXXH3
	}
	copy(b.Sum[:], d)
}

// ClearDigest makes the block record no hash.
func (b *BlockRef) ClearDigest() { b.Sum, b.Hash = [32]byte{}, NoHash }

// setDigestHex records the hex hash s of kind k.
func (b *BlockRef) setDigestHex(k HashKind, s string) error {
	raw, err := hex.DecodeString(s)
	if err != nil || len(raw) != k.size() {
		return fmt.Errorf("block hash %q is not hex of %d bytes", s, k.size())
	}
	b.Hash = k
	copy(b.Sum[:], raw)
	return nil
}

// DigestIs reports whether plain has the block's recorded hash.
func (b BlockRef) DigestIs(plain []byte) bool {
	return b.Hash != NoHash && bytes.Equal(BlockDigest(b.Small(), plain), b.DigestBytes())
}

// blockRefJSON is BlockRef as manifests spell it: the hash as hex under
// the name of its kind.
type blockRefJSON struct {
	Pack        int        `json:"pack"`
	Offset      int64      `json:"offset"`
	Length      int64      `json:"length"`
	FileOffset  int64      `json:"file_offset"`
	Size        int64      `json:"size"`
	ChunkOffset int64      `json:"chunk_offset,omitempty"`
	SHA256      string     `json:"sha256,omitempty"`
	XXH3        string     `json:"xxh3,omitempty"`
	Parts       []BlockRef `json:"parts,omitempty"`
}

func (b BlockRef) MarshalJSON() ([]byte, error) {
	j := blockRefJSON{Pack: b.Pack, Offset: b.Offset, Length: b.Length, FileOffset: b.FileOffset, Size: b.Size,
		ChunkOffset: b.ChunkOffset, Parts: b.Parts}
	switch b.Hash {
	case HashSHA256:
		j.SHA256 = b.Digest()
	case HashXXH3:
		j.XXH3 = b.Digest()
	}
	return json.Marshal(j)
}

func (b *BlockRef) UnmarshalJSON(data []byte) error {
	var j blockRefJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return err
	}
	*b = BlockRef{Pack: j.Pack, Offset: j.Offset, Length: j.Length, FileOffset: j.FileOffset, Size: j.Size,
		ChunkOffset: j.ChunkOffset, Parts: j.Parts}
	switch {
	case j.SHA256 != "" && j.XXH3 != "":
		return fmt.Errorf("block at %d has both a sha256 and an xxh3 hash", j.FileOffset)
	case j.SHA256 != "":
		return b.setDigestHex(HashSHA256, j.SHA256)
	case j.XXH3 != "":
		return b.setDigestHex(HashXXH3, j.XXH3)
	}
	return nil
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

package repo

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func TestFramesChecksummed(t *testing.T) {
	plain := walLike(1<<20 + 5)
	c := &Codec{Level: 3}
	blk, err := c.EncodeBlock(nil, plain)
	if err != nil {
		t.Fatal(err)
	}
	if !framesChecksummed(blk[headerSize:]) {
		t.Error("a block pgkeep wrote is not seen as checksummed")
	}
	// Several frames, as wal-push writes them.
	pieces, _, err := c.encodeFrom(bytes.NewReader(walLike(10<<20)), 10<<20)
	if err != nil {
		t.Fatal(err)
	}
	multi := bytes.Join(pieces, nil)
	if !framesChecksummed(multi[headerSize:]) {
		t.Error("a multi-frame object is not seen as checksummed")
	}
	noCRC, _ := zstd.NewWriter(nil, zstd.WithEncoderCRC(false))
	bare := noCRC.EncodeAll(plain, nil)
	withCRC, _ := zstd.NewWriter(nil, zstd.WithEncoderCRC(true))
	good := withCRC.EncodeAll(plain, nil)
	random := make([]byte, 300<<10)
	rand.Read(random)
	for name, body := range map[string][]byte{
		"no checksum":            bare,
		"second frame without":   append(append([]byte{}, good...), bare...),
		"truncated":              good[:len(good)-1],
		"trailing garbage":       append(append([]byte{}, good...), 1, 2, 3),
		"empty":                  nil,
		"not zstd":               random,
		"incompressible raw+crc": nil,
	} {
		if name == "incompressible raw+crc" {
			if !framesChecksummed(withCRC.EncodeAll(random, nil)) {
				t.Errorf("%s: want true", name)
			}
			continue
		}
		if framesChecksummed(body) {
			t.Errorf("%s: seen as checksummed", name)
		}
	}
}

// Without the SHA-256 pass, every single-byte corruption of a compressed
// body is still caught (by the frames' checksums or their structure), or
// decodes to exactly the original.
func TestDecodeWithoutSHACatchesCorruption(t *testing.T) {
	plain := walLike(64 << 10)
	c := &Codec{Level: 3}
	blk, err := c.EncodeBlock(nil, plain)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := c.DecodeBlockTo(make([]byte, 0, 1<<10), blk, false)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("clean block: %v", err)
	}
	missed := 0
	for i := headerSize; i < len(blk); i++ {
		bad := append([]byte{}, blk...)
		bad[i] ^= 0x20
		out, _, err := c.DecodeBlockTo(nil, bad, false)
		switch {
		case err != nil && !errors.Is(err, ErrCorrupt):
			t.Fatalf("byte %d: %v, want ErrCorrupt", i, err)
		case err == nil && !bytes.Equal(out, plain):
			missed++
		}
	}
	if missed > 0 {
		t.Errorf("%d of %d corrupted bytes decoded to wrong content unnoticed", missed, len(blk)-headerSize)
	}
}

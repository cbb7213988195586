package repo

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/pgkeep/pgkeep/pg"
)

// blockBound is a capacity that holds the object of a plain block of n
// bytes whatever its content: the header, zstd's worst case (incompressible
// content goes in raw blocks, a few bytes per 128 KiB) and age's overhead
// (its header, 16 bytes per 64 KiB chunk).
func blockBound(n int) int { return headerSize + n + n/128 + 1024 }

// EncodeBlock builds the object in the caller's buffer: the same bytes as
// the piecewise encoder, whatever the buffer held before, and, in a buffer
// large enough, without reallocating even for incompressible content.
func TestEncodeBlockInPlace(t *testing.T) {
	random := make([]byte, 4<<20)
	rand.Read(random)
	for name, c := range codecs(t) {
		for _, tc := range []struct {
			name  string
			plain []byte
		}{{"empty", nil}, {"small", walLike(100)}, {"wal", walLike(4 << 20)}, {"random", random}, {"odd", walLike(1<<20 + 7)}} {
			t.Run(fmt.Sprintf("%s/%s", name, tc.name), func(t *testing.T) {
				buf := make([]byte, 3, blockBound(4<<20))
				copy(buf, "old")
				blk, err := c.EncodeBlock(buf[:0], tc.plain)
				sum := xxh3Sum(tc.plain)
				if err != nil {
					t.Fatal(err)
				}
				if len(tc.plain) > 0 && &blk[0] != &buf[:1][0] {
					t.Error("EncodeBlock reallocated a buffer large enough")
				}
				if len(c.Recipients) == 0 {
					// The same body as encodePieces; the header sums
					// with xxh3-128 instead of SHA-256.
					pieces, err := c.encodePieces(tc.plain, sha256.Sum256(tc.plain), 1)
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(blk[headerSize:], bytes.Join(pieces, nil)[headerSize:]) {
						t.Fatal("EncodeBlock's body differs from encodePieces'")
					}
					if blk[5]&flagXXH3 == 0 {
						t.Fatal("a block's header does not say its sum is xxh3-128")
					}
				}
				got, h, err := c.DecodeBlock(blk)
				if err != nil || !bytes.Equal(got, tc.plain) || h.SHA256 != sum || !h.XXH3 {
					t.Fatalf("decode: %v", err)
				}
				// Appending after existing content keeps it.
				pre := append(make([]byte, 0, 8), "prefix"...)
				blk2, err := c.EncodeBlock(pre, tc.plain)
				if err != nil || string(blk2[:6]) != "prefix" {
					t.Fatalf("append to a non-empty dst: %v", err)
				}
				if got, _, err := c.DecodeBlock(blk2[6:]); err != nil || !bytes.Equal(got, tc.plain) {
					t.Fatalf("decode after prefix: %v", err)
				}
			})
		}
	}
}

// DecodeBlock refuses a block with any damaged byte, the zstd frame's own
// checksum included (verify relies on it).
func TestDecodeBlockDetectsEveryDamage(t *testing.T) {
	for name, c := range codecs(t) {
		plain := walLike(300 << 10)
		blk, err := c.EncodeBlock(nil, plain)
		if err != nil {
			t.Fatal(err)
		}
		for _, at := range []int{headerSize, headerSize + 1, len(blk) / 2, len(blk) - 5, len(blk) - 1} {
			bad := bytes.Clone(blk)
			bad[at] ^= 0x01
			got, _, err := c.DecodeBlock(bad)
			if err == nil {
				t.Fatalf("%s: a flipped bit at %d of %d decoded (equal to plain: %v)", name, at, len(blk), bytes.Equal(got, plain))
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("%s: flipped bit at %d: %v, want ErrCorrupt", name, at, err)
			}
		}
	}
}

// Restore's fast path (no SHA-256) still refuses a truncated or extended
// block and one encrypted to another key, and writes no plain bytes for it.
func TestDecodeBlockToRefusesTruncatedAndWrongKey(t *testing.T) {
	other, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range codecs(t) {
		plain := walLike(200 << 10)
		blk, err := c.EncodeBlock(nil, plain)
		if err != nil {
			t.Fatal(err)
		}
		dst := make([]byte, 0, len(plain))
		for _, cut := range []int{1, 16, 17, 1000, len(blk) - headerSize - 1} {
			if _, _, err := c.DecodeBlockTo(dst, blk[:len(blk)-cut], false); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("%s: block cut by %d: %v, want ErrCorrupt", name, cut, err)
			}
		}
		if _, _, err := c.DecodeBlockTo(dst, append(bytes.Clone(blk), 0), false); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: block with a trailing byte: %v, want ErrCorrupt", name, err)
		}
		if len(c.Identities) == 0 {
			continue
		}
		wrong := *c
		wrong.Identities = []age.Identity{other}
		if _, _, err := wrong.DecodeBlockTo(dst, blk, false); !errors.Is(err, ErrWrongKey) {
			t.Fatalf("%s: wrong identity: %v, want ErrWrongKey", name, err)
		}
	}
}

// A block object's header sum is xxh3-128 of its plain bytes: with nothing
// else to check an uncompressed block (no zstd frame checksum), a changed
// byte is still caught, by DecodeBlock and by the streaming Decode.
func TestBlockHeaderSumCatchesChange(t *testing.T) {
	for name, c := range codecs(t) {
		if c.Level > 0 || len(c.Recipients) > 0 {
			continue // zstd's checksum and age's MAC catch these first
		}
		plain := walLike(64 << 10)
		blk, err := c.EncodeBlock(nil, plain)
		if err != nil {
			t.Fatal(err)
		}
		blk[headerSize+1000] ^= 1
		if _, _, err := c.DecodeBlock(blk); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: a changed byte decoded: %v", name, err)
		}
		if _, err := c.Decode(io.Discard, bytes.NewReader(blk)); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: a changed byte streamed: %v", name, err)
		}
		blk[headerSize+1000] ^= 1
		if got, _, err := c.DecodeBlock(blk); err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("%s: the unchanged block: %v", name, err)
		}
	}
}

// A backup that stores blocks records repository format 5 before its
// manifest is visible: pgkeeps of format 4 refuse the repository instead
// of meeting headers they do not know.
func TestStoredBlocksUpgradeTheRepositoryFormat(t *testing.T) {
	ctx := context.Background()
	r := testRepo(t)
	commitFake(t, r, "20260101T000000Z-0001", 5, time.Now().Add(-time.Hour))
	if r.Config.Format != 3 {
		t.Fatalf("a backup without blocks: format %d, want init's 3", r.Config.Format)
	}
	id := "20260101T010000Z-0002"
	pw := r.CreatePack(ctx, id, 0)
	blk, err := r.EncodeBlock(nil, []byte("page"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pw.Write(blk); err != nil {
		t.Fatal(err)
	}
	p, err := pw.Close()
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	m := &Manifest{Summary: Summary{ID: id, StartTime: at, StopTime: at, StartLSN: pg.LSN(10 * segSize).String(),
		StartWAL: segName(10), StopWAL: segName(11), SegmentSize: segSize, Timeline: 1}, BlockSize: 4 << 20,
		Packs: []Pack{p}, Files: []File{{Path: "f", Size: 4, Mode: 0o600, Blocks: []BlockRef{{Pack: 0, Length: int64(len(blk)), Size: 4}}}},
		InlineBlocks: true}
	if err := r.CommitBackup(ctx, m); err != nil {
		t.Fatal(err)
	}
	again, err := Open(ctx, r.backend, OpenOptions{CompressionLevel: -1})
	if err != nil {
		t.Fatal(err)
	}
	if again.Config.Format != 5 {
		t.Fatalf("after a backup that stored blocks: format %d, want 5", again.Config.Format)
	}
}

package repo

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"testing"

	"filippo.io/age"
)

// walLike returns data that compresses like real WAL: runs of structured
// records with some random payload.
func walLike(n int) []byte {
	rng := rand.New(rand.NewSource(1))
	b := make([]byte, n)
	for i := 0; i < n; i += 64 {
		end := min(i+64, n)
		if rng.Intn(3) == 0 {
			rng.Read(b[i:end])
		} else {
			copy(b[i:end], fmt.Sprintf("row %08d some text that repeats a lot in tuples %d", i, i%97))
		}
	}
	return b
}

func codecs(t testing.TB) map[string]*Codec {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return map[string]*Codec{
		"plain":    {Level: 0},
		"zstd3":    {Level: 3},
		"zstd3age": {Level: 3, Recipients: []age.Recipient{id.Recipient()}, Identities: []age.Identity{id}},
		"age":      {Level: 0, Recipients: []age.Recipient{id.Recipient()}, Identities: []age.Identity{id}},
	}
}

func TestCodecRoundTrip(t *testing.T) {
	for name, c := range codecs(t) {
		for _, size := range []int{0, 1, 100, 1 << 20, 3<<20 + 17} {
			plain := walLike(size)
			var obj bytes.Buffer
			if err := c.EncodeBytes(&obj, plain); err != nil {
				t.Fatalf("%s/%d encode: %v", name, size, err)
			}
			h, err := ReadHeader(bytes.NewReader(obj.Bytes()))
			if err != nil || h.Size != int64(size) || h.Encrypted != (len(c.Recipients) > 0) {
				t.Fatalf("%s/%d header %+v %v", name, size, h, err)
			}
			if h.Encrypted && size > 100 && bytes.Contains(obj.Bytes(), plain[:100]) {
				t.Fatalf("%s: plaintext visible in encrypted object", name)
			}
			var out bytes.Buffer
			if _, err := c.Decode(&out, bytes.NewReader(obj.Bytes())); err != nil {
				t.Fatalf("%s/%d decode: %v", name, size, err)
			}
			if !bytes.Equal(out.Bytes(), plain) {
				t.Fatalf("%s/%d: round trip differs", name, size)
			}
		}
	}
}

func TestCodecDetectsDamage(t *testing.T) {
	for name, c := range codecs(t) {
		plain := walLike(1 << 20)
		var obj bytes.Buffer
		if err := c.EncodeBytes(&obj, plain); err != nil {
			t.Fatal(err)
		}
		full := obj.Bytes()
		cases := map[string][]byte{
			"truncated":  full[:len(full)/2],
			"no body":    full[:headerSize],
			"short head": full[:10],
		}
		flipped := bytes.Clone(full)
		flipped[len(flipped)-20] ^= 0x40
		cases["bit flip"] = flipped
		head := bytes.Clone(full)
		head[20] ^= 1
		cases["header flip"] = head
		for cname, data := range cases {
			_, err := c.Decode(&bytes.Buffer{}, bytes.NewReader(data))
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("%s/%s: want ErrCorrupt, got %v", name, cname, err)
			}
		}
	}
}

func TestCodecWrongKey(t *testing.T) {
	right, _ := age.GenerateX25519Identity()
	wrong, _ := age.GenerateX25519Identity()
	enc := &Codec{Level: 3, Recipients: []age.Recipient{right.Recipient()}}
	var obj bytes.Buffer
	if err := enc.EncodeBytes(&obj, walLike(1000)); err != nil {
		t.Fatal(err)
	}
	dec := &Codec{Identities: []age.Identity{wrong}}
	if _, err := dec.Decode(&bytes.Buffer{}, bytes.NewReader(obj.Bytes())); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("wrong key: %v", err)
	}
	if _, err := (&Codec{}).Decode(&bytes.Buffer{}, bytes.NewReader(obj.Bytes())); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("no key: %v", err)
	}
}

func TestEncodeRefusesChangedContent(t *testing.T) {
	c := &Codec{Level: 1}
	plain := walLike(4096)
	sum := [32]byte{1}
	if err := c.Encode(&bytes.Buffer{}, bytes.NewReader(plain), int64(len(plain)), sum); err == nil {
		t.Fatal("encode accepted content whose checksum differs from the header")
	}
}

// BenchmarkCodec reports MB/s of plain bytes for zstd levels 1/3/6 with and
// without age, on 16 MiB of WAL-like data.
func BenchmarkCodec(b *testing.B) {
	plain := walLike(16 << 20)
	id, _ := age.GenerateX25519Identity()
	for _, level := range []int{1, 3, 6} {
		for _, enc := range []bool{false, true} {
			c := &Codec{Level: level}
			if enc {
				c.Recipients = []age.Recipient{id.Recipient()}
				c.Identities = []age.Identity{id}
			}
			name := fmt.Sprintf("zstd%d", level)
			if enc {
				name += "+age"
			}
			var obj bytes.Buffer
			if err := c.EncodeBytes(&obj, plain); err != nil {
				b.Fatal(err)
			}
			b.Run(name+"/encode", func(b *testing.B) {
				b.SetBytes(int64(len(plain)))
				var out bytes.Buffer
				for i := 0; i < b.N; i++ {
					out.Reset()
					if err := c.EncodeBytes(&out, plain); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(len(plain))/float64(out.Len()), "ratio")
			})
			// wal-push's path: 4 MiB frames compressed on every core.
			b.Run(name+"/encode-frames", func(b *testing.B) {
				b.SetBytes(int64(len(plain)))
				for i := 0; i < b.N; i++ {
					if _, _, err := c.encodeFrom(bytes.NewReader(plain), int64(len(plain))); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run(name+"/decode", func(b *testing.B) {
				b.SetBytes(int64(len(plain)))
				var out bytes.Buffer
				for i := 0; i < b.N; i++ {
					out.Reset()
					if _, err := c.Decode(&out, bytes.NewReader(obj.Bytes())); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// Blocks and streamed objects are the same format: each side reads the other.
func TestBlockInterop(t *testing.T) {
	for name, c := range codecs(t) {
		for _, size := range []int{0, 10, 1 << 20} {
			plain := walLike(size)
			blk, err := c.EncodeBlock(nil, plain)
			sum := xxh3Sum(plain)
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			h, err := c.Decode(&out, bytes.NewReader(blk))
			if err != nil || !bytes.Equal(out.Bytes(), plain) || h.SHA256 != sum {
				t.Fatalf("%s/%d: block -> stream: %v", name, size, err)
			}
			var obj bytes.Buffer
			c.EncodeBytes(&obj, plain)
			got, _, err := c.DecodeBlock(obj.Bytes())
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("%s/%d: stream -> block: %v", name, size, err)
			}
			if size > 0 {
				if _, _, err := c.DecodeBlock(blk[:len(blk)-1]); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("%s/%d: truncated block: %v", name, size, err)
				}
			}
		}
	}
}

// A segment encoded as several zstd frames at once (wal-push) decodes with
// both the streaming and the in-memory decoder, and a damaged frame is
// still caught.
func TestParallelFramesRoundTrip(t *testing.T) {
	plain := walLike(16 << 20)
	sum := sha256.Sum256(plain)
	for name, c := range codecs(t) {
		t.Run(name, func(t *testing.T) {
			pieces, err := c.encodePieces(plain, sum, 4)
			if err != nil {
				t.Fatal(err)
			}
			if c.Level > 0 && len(c.Recipients) == 0 && len(pieces) != 5 {
				t.Fatalf("want header + 4 frames, got %d pieces", len(pieces))
			}
			obj := bytes.Join(pieces, nil)
			var out bytes.Buffer
			if _, err := c.Decode(&out, bytes.NewReader(obj)); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), plain) {
				t.Fatal("streaming decode differs")
			}
			got, _, err := c.DecodeBlock(obj)
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("block decode: %v", err)
			}
			obj[len(obj)-len(obj)/3] ^= 0x40
			if _, err := c.Decode(io.Discard, bytes.NewReader(obj)); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("damaged frame: got %v, want ErrCorrupt", err)
			}
		})
	}
}

// encodeFrom (wal-push's streaming path) round-trips at frame boundaries
// and in between, and a source shorter than announced is an error.
func TestEncodeFromRoundTrip(t *testing.T) {
	for name, c := range codecs(t) {
		for _, size := range []int{0, 100, frameSize, 3*frameSize + 7, 16 << 20} {
			plain := walLike(size)
			pieces, sum, err := c.encodeFrom(bytes.NewReader(plain), int64(size))
			if err != nil {
				t.Fatalf("%s/%d: %v", name, size, err)
			}
			if sum != sha256.Sum256(plain) {
				t.Fatalf("%s/%d: wrong sum", name, size)
			}
			var out bytes.Buffer
			if _, err := c.Decode(&out, bytes.NewReader(bytes.Join(pieces, nil))); err != nil || !bytes.Equal(out.Bytes(), plain) {
				t.Fatalf("%s/%d: decode: %v", name, size, err)
			}
		}
		if _, _, err := c.encodeFrom(bytes.NewReader(make([]byte, 10)), 11); err == nil {
			t.Fatalf("%s: short source accepted", name)
		}
	}
}

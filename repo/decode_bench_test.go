package repo

import (
	"crypto/rand"
	"testing"

	"filippo.io/age"
)

// BenchmarkDecodeBlock is restore's per-block work for incompressible data
// (zstd stores it raw), plain and encrypted.
func BenchmarkDecodeBlock(b *testing.B) {
	id, _ := age.GenerateX25519Identity()
	plain := make([]byte, 4<<20)
	rand.Read(plain)
	for name, c := range map[string]*Codec{
		"zstd3":    {Level: 3},
		"zstd3age": {Level: 3, Recipients: []age.Recipient{id.Recipient()}, Identities: []age.Identity{id}},
	} {
		b.Run(name, func(b *testing.B) {
			obj, err := c.EncodeBlock(nil, plain)
			if err != nil {
				b.Fatal(err)
			}
			dst := make([]byte, 0, len(plain))
			b.SetBytes(int64(len(plain)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, _, err := c.DecodeBlockTo(dst, obj, false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

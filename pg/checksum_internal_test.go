//go:build amd64

package pg

import (
	"math/rand"
	"testing"
)

// The AVX2 and the portable paths agree on random pages, including the
// checksum field's own bytes (treated as zero) and every block number.
func TestPageChecksumPathsAgree(t *testing.T) {
	if !haveAVX2 {
		t.Skip("no AVX2 on this CPU: only the portable path exists here")
	}
	rng := rand.New(rand.NewSource(1))
	page := make([]byte, BlockSize)
	for i := 0; i < 2000; i++ {
		rng.Read(page)
		blk := rng.Uint32()
		fast := PageChecksum(page, blk)
		haveAVX2 = false
		slow := PageChecksum(page, blk)
		haveAVX2 = true
		if fast != slow {
			t.Fatalf("page %d: AVX2 %d, portable %d", i, fast, slow)
		}
		page[8], page[9] = page[8]^0xff, page[9]^0x0f
		if PageChecksum(page, blk) != fast {
			t.Fatalf("page %d: the checksum field's bytes changed the checksum", i)
		}
	}
}

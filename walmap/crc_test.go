package walmap

import (
	"math/rand/v2"
	"testing"
)

// TestRecordCRC: the fast record CRC equals hash/crc32's over the body
// then the header, for every length around the loop's and the split's
// edges and at every alignment.
func TestRecordCRC(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	buf := make([]byte, 5000)
	for i := range buf {
		buf[i] = byte(r.Uint32())
	}
	for n := recordHeaderSize; n < 1200; n++ {
		for off := 0; off < 8; off++ {
			rec := buf[off : off+n]
			if got, want := recordCRC(rec), recordCRCGo(rec); got != want {
				t.Fatalf("record of %d bytes at offset %d: CRC %08x, want %08x", n, off, got, want)
			}
		}
	}
	rec := buf[1:4999]
	if got, want := recordCRC(rec), recordCRCGo(rec); got != want {
		t.Fatalf("record of %d bytes: CRC %08x, want %08x", len(rec), got, want)
	}
	// A record must never be read past its end: the body's last byte
	// changes the CRC.
	a := append([]byte(nil), buf[:100]...)
	c := recordCRC(a)
	a[99] ^= 1
	if recordCRC(a) == c {
		t.Fatal("the last byte does not change the CRC")
	}
}

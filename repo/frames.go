package repo

import "encoding/binary"

const zstdMagic = 0xFD2FB528

// framesChecksummed reports whether body is one or more zstd frames that
// all carry a content checksum (XXH64), walking frame and block headers
// only. Anything else (skippable frames, a frame without checksum, a
// truncated or malformed header) is false, and the caller then checks the
// plain bytes' SHA-256 instead.
func framesChecksummed(body []byte) bool {
	if len(body) == 0 {
		return false
	}
	for len(body) > 0 {
		if len(body) < 5 || binary.LittleEndian.Uint32(body) != zstdMagic {
			return false
		}
		fhd := body[4]
		if fhd&0x04 == 0 || fhd&0x08 != 0 { // no checksum, or the reserved bit
			return false
		}
		single := fhd&0x20 != 0
		n := 5
		if !single {
			n++ // window descriptor
		}
		n += [4]int{0, 1, 2, 4}[fhd&0x03] // dictionary ID
		fcs := [4]int{0, 2, 4, 8}[fhd>>6]
		if fhd>>6 == 0 && single {
			fcs = 1
		}
		n += fcs
		for {
			if len(body) < n+3 {
				return false
			}
			bh := uint32(body[n]) | uint32(body[n+1])<<8 | uint32(body[n+2])<<16
			n += 3
			switch (bh >> 1) & 3 {
			case 0, 2: // raw, compressed
				n += int(bh >> 3)
			case 1: // RLE: one byte
				n++
			default:
				return false
			}
			if bh&1 != 0 { // last block
				break
			}
		}
		n += 4 // the checksum
		if len(body) < n {
			return false
		}
		body = body[n:]
	}
	return true
}

package walmap

import "hash/crc32"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32c is the standard CRC-32C of b, as PostgreSQL computes it
// (INIT_CRC32C, COMP_CRC32C, FIN_CRC32C).
func crc32c(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// crc32cCombine returns the CRC-32C of A||B from crc(A), crc(B) and len(B)
// (zlib's crc32_combine with the Castagnoli polynomial). It lets the two
// segments a record straddles each checksum their own part, so maps can be
// stitched without the segment bytes.
func crc32cCombine(crc1, crc2 uint32, len2 int64) uint32 {
	if len2 <= 0 {
		return crc1
	}
	var even, odd [32]uint32
	odd[0] = 0x82F63B78 // reversed Castagnoli polynomial
	row := uint32(1)
	for n := 1; n < 32; n++ {
		odd[n] = row
		row <<= 1
	}
	gf2Square(&even, &odd) // two zero bits
	gf2Square(&odd, &even) // four zero bits
	for {
		gf2Square(&even, &odd)
		if len2&1 != 0 {
			crc1 = gf2Times(&even, crc1)
		}
		len2 >>= 1
		if len2 == 0 {
			break
		}
		gf2Square(&odd, &even)
		if len2&1 != 0 {
			crc1 = gf2Times(&odd, crc1)
		}
		len2 >>= 1
		if len2 == 0 {
			break
		}
	}
	return crc1 ^ crc2
}

func gf2Times(mat *[32]uint32, vec uint32) uint32 {
	var sum uint32
	for i := 0; vec != 0; i, vec = i+1, vec>>1 {
		if vec&1 != 0 {
			sum ^= mat[i]
		}
	}
	return sum
}

func gf2Square(square, mat *[32]uint32) {
	for n := 0; n < 32; n++ {
		square[n] = gf2Times(mat, mat[n])
	}
}

// recordCRCGo is recordCRC with hash/crc32 alone.
func recordCRCGo(rec []byte) uint32 {
	return crc32.Update(crc32c(rec[recordHeaderSize:]), castagnoli, rec[:20])
}

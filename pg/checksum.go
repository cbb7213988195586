package pg

import (
	"encoding/binary"
	"path"
	"regexp"
	"strconv"
	"strings"
)

// BlockSize is PostgreSQL's default BLCKSZ; pgkeep supports only it.
const BlockSize = 8192

// RelSegBlocks is the number of blocks in one 1 GiB relation segment file.
const RelSegBlocks = (1 << 30) / BlockSize

const (
	nSums    = 32
	fnvPrime = 16777619
)

// Initial states of the 32 parallel FNV-1a-like hashes PostgreSQL's page
// checksum runs (a fixed part of the on-disk format).
var checksumBaseOffsets = [nSums]uint32{
	0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A,
	0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
	0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA,
	0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
	0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE,
	0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
	0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E,
	0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
}

// PageChecksum computes the data checksum PostgreSQL stores in pd_checksum
// for page (BlockSize bytes, little-endian host) at absolute block blkno of
// its relation fork. The page's own checksum field is treated as zero.
func PageChecksum(page []byte, blkno uint32) uint16 {
	const rowSize = 4 * nSums
	sums := checksumBaseOffsets
	// Row 0 holds pd_checksum (bytes 8..9), computed as zero, so it goes
	// in as a copy; the other rows are read in place.
	var first [rowSize]byte
	copy(first[:], page[:rowSize])
	first[8], first[9] = 0, 0
	mixRows(&sums, &first, page[rowSize:BlockSize])
	var result uint32
	for _, s := range sums {
		result ^= s
	}
	result ^= blkno
	return uint16(result%65535) + 1
}

// mixRowsGo folds the first row and then the rows of rest (whole rows of
// 32 little-endian words) into the 32 sums, and ends with PostgreSQL's two
// rounds of zeros. mixRows is this, or the same in AVX2 where the CPU has
// it (the 32 sums are four 8-lane vectors: ~4x faster).
func mixRowsGo(sums *[nSums]uint32, first *[4 * nSums]byte, rest []byte) {
	const rowSize = 4 * nSums
	mixRow(sums, first)
	for i := 0; i+rowSize <= len(rest); i += rowSize {
		mixRow(sums, (*[rowSize]byte)(rest[i:]))
	}
	for r := 0; r < 2; r++ {
		for j := range sums {
			t := sums[j]
			sums[j] = t*fnvPrime ^ (t >> 17)
		}
	}
}

// mixRow folds one row of 32 little-endian words into the 32 sums.
func mixRow(sums *[nSums]uint32, row *[4 * nSums]byte) {
	for j := range sums {
		t := sums[j] ^ binary.LittleEndian.Uint32(row[j*4:])
		sums[j] = t*fnvPrime ^ (t >> 17)
	}
}

// PageHeader is the part of a page header a backup looks at.
type PageHeader struct {
	LSN      LSN
	Checksum uint16
	Upper    uint16
}

// ParsePageHeader reads the page header fields of page.
func ParsePageHeader(page []byte) PageHeader {
	hi := binary.LittleEndian.Uint32(page[0:])
	lo := binary.LittleEndian.Uint32(page[4:])
	return PageHeader{
		LSN:      LSN(uint64(hi)<<32 | uint64(lo)),
		Checksum: binary.LittleEndian.Uint16(page[8:]),
		Upper:    binary.LittleEndian.Uint16(page[14:]),
	}
}

// IsNewPage reports a page PostgreSQL has not initialized (pd_upper == 0);
// such pages carry no checksum.
func IsNewPage(page []byte) bool { return ParsePageHeader(page).Upper == 0 }

var relFileRE = regexp.MustCompile(`^[0-9]+(_(fsm|vm|init))?(\.[0-9]+)?$`)

// ChecksummedFile reports whether the file at rel (a slash path relative to
// the data directory) is a relation file whose pages carry data checksums,
// and the segment number from its name (".N" suffix) for block numbering.
func ChecksummedFile(rel string) (segno uint32, ok bool) {
	if !strings.HasPrefix(rel, "base/") && !strings.HasPrefix(rel, "global/") && !strings.HasPrefix(rel, "pg_tblspc/") {
		return 0, false
	}
	base := path.Base(rel)
	if !relFileRE.MatchString(base) {
		return 0, false
	}
	if i := strings.LastIndexByte(base, '.'); i >= 0 {
		n, err := strconv.ParseUint(base[i+1:], 10, 32)
		if err != nil {
			return 0, false
		}
		segno = uint32(n)
	}
	return segno, true
}

package pg

import "golang.org/x/sys/cpu"

// mixRowsAVX2 is mixRowsGo for len(rest)/128 rows, in checksum_amd64.s.
//
//go:noescape
func mixRowsAVX2(sums *[nSums]uint32, first *[4 * nSums]byte, rest *byte, rows int)

var haveAVX2 = cpu.X86.HasAVX2

func mixRows(sums *[nSums]uint32, first *[4 * nSums]byte, rest []byte) {
	rows := len(rest) / (4 * nSums)
	if !haveAVX2 || rows == 0 {
		mixRowsGo(sums, first, rest)
		return
	}
	mixRowsAVX2(sums, first, &rest[0], rows)
}

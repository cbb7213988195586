//go:build !amd64

package pg

func mixRows(sums *[nSums]uint32, first *[4 * nSums]byte, rest []byte) {
	mixRowsGo(sums, first, rest)
}

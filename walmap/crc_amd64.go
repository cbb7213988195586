package walmap

import (
	"hash/crc32"

	"golang.org/x/sys/cpu"
)

// crcBodyHeaderSSE42 is in crc_amd64.s.
//
//go:noescape
func crcBodyHeaderSSE42(crc uint32, body *byte, n int, hdr *byte) uint32

var haveSSE42 = cpu.X86.HasSSE42

// recordCRC returns the CRC-32C of a whole record rec (at least its 24
// header bytes) as PostgreSQL computes it: over the bytes after the header,
// then over the header up to xl_crc. Most records are a few hundred bytes:
// one call of a plain CRC32Q loop costs less than two of crc32.Update, whose
// three-way split pays only for longer ones.
func recordCRC(rec []byte) uint32 {
	body := rec[recordHeaderSize:]
	if !haveSSE42 {
		return recordCRCGo(rec)
	}
	crc := ^uint32(0)
	if len(body) >= 512 {
		crc = ^crc32.Update(0, castagnoli, body)
		body = body[len(body):]
	}
	var p *byte
	if len(body) > 0 {
		p = &body[0]
	}
	return ^crcBodyHeaderSSE42(crc, p, len(body), &rec[0])
}

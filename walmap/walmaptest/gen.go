// Package walmaptest writes valid WAL segments for tests of the code
// around walmap (wal-push, verify, roll-ups): PostgreSQL 15 page and
// record layout, CRCs right, records spanning pages and segments, and an
// XLOG_SWITCH ending the last segment so every segment maps cleanly.
package walmaptest

import (
	"encoding/binary"
	"hash/crc32"

	"github.com/pgkeep/pgkeep/pg"
)

const (
	page        = 8192
	shortHeader = 24
	longHeader  = 40
	magic15     = 0xD110
	rmHeap      = 10
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Segments returns n consecutive segments of timeline tli, from absolute
// segment number first, of segSize bytes, written by system sysid, and
// their names. Each record is a heap record touching one block of one of
// three relations (spc 1663, db 5, rel 16384..16386); blocks grow with
// the record number, so every segment's map differs.
func Segments(sysid uint64, tli uint32, segSize int, first uint64, n int) (names []string, segs [][]byte) {
	g := &gen{segSize: segSize, sysid: sysid, tli: tli, first: first, data: make([]byte, n*segSize)}
	end := n*segSize - 2*page
	for i := 0; g.pos < end; i++ {
		rel := uint32(16384 + i%3)
		g.add(heapRecord(rel, uint32(i/3), i))
	}
	g.add(record(0, 0x40, nil, nil)) // XLOG_SWITCH: the rest is unused
	per := uint64(pg.SegmentsPerLog(int64(segSize)))
	for i := range n {
		segno := first + uint64(i)
		names = append(names, pg.SegmentName(tli, uint32(segno/per), uint32(segno%per)))
		segs = append(segs, g.data[i*segSize:(i+1)*segSize])
	}
	return names, segs
}

type gen struct {
	segSize int
	sysid   uint64
	tli     uint32
	first   uint64
	data    []byte
	pos     int
	prev    uint64
}

func (g *gen) lsn(off int) uint64 { return g.first*uint64(g.segSize) + uint64(off) }

func (g *gen) header(off int, rem uint32) int {
	b := g.data[off:]
	le := binary.LittleEndian
	var info uint16
	if rem > 0 {
		info |= 0x1
	}
	size := shortHeader
	if off%g.segSize == 0 {
		info |= 0x2
		size = longHeader
		le.PutUint64(b[24:], g.sysid)
		le.PutUint32(b[32:], uint32(g.segSize))
		le.PutUint32(b[36:], page)
	}
	le.PutUint16(b, magic15)
	le.PutUint16(b[2:], info)
	le.PutUint32(b[4:], g.tli)
	le.PutUint64(b[8:], g.lsn(off))
	le.PutUint32(b[16:], rem)
	return size
}

func (g *gen) add(rec []byte) {
	le := binary.LittleEndian
	le.PutUint64(rec[8:], g.prev)
	crc := crc32.Update(crc32.Checksum(rec[24:], castagnoli), castagnoli, rec[:20])
	le.PutUint32(rec[20:], crc)
	g.pos = (g.pos + 7) &^ 7
	if g.pos%page == 0 {
		g.pos += g.header(g.pos, 0)
	}
	lsn := g.lsn(g.pos)
	for len(rec) > 0 {
		pageEnd := (g.pos/page + 1) * page
		k := copy(g.data[g.pos:pageEnd], rec)
		g.pos += k
		rec = rec[k:]
		if len(rec) > 0 {
			g.pos += g.header(g.pos, uint32(len(rec)))
		}
	}
	g.prev = lsn
}

// heapRecord is an XLOG_HEAP_INSERT-like record with one block reference
// carrying data, and main data.
func heapRecord(rel, blk uint32, i int) []byte {
	le := binary.LittleEndian
	data := make([]byte, 40+i%50)
	for j := range data {
		data[j] = byte(i + j)
	}
	hdr := make([]byte, 24)
	hdr = append(hdr, 0, 0x20) // block id 0, main fork, HAS_DATA
	hdr = le.AppendUint16(hdr, uint16(len(data)))
	hdr = le.AppendUint32(hdr, 1663)
	hdr = le.AppendUint32(hdr, 5)
	hdr = le.AppendUint32(hdr, rel)
	hdr = le.AppendUint32(hdr, blk)
	main := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	hdr = append(hdr, 255, uint8(len(main)))
	return finish(append(append(hdr, data...), main...), rmHeap, 0x00, 700)
}

func record(rmid, info uint8, hdrExtra, payload []byte) []byte {
	hdr := append(make([]byte, 24), hdrExtra...)
	return finish(append(hdr, payload...), rmid, info, 0)
}

func finish(rec []byte, rmid, info uint8, xid uint32) []byte {
	le := binary.LittleEndian
	le.PutUint32(rec, uint32(len(rec)))
	le.PutUint32(rec[4:], xid)
	rec[16] = info
	rec[17] = rmid
	return rec
}

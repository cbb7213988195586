package walmap

import (
	"encoding/binary"

	"github.com/pgkeep/pgkeep/pg"
)

// walGen lays records out over consecutive segments the way PostgreSQL
// does: MAXALIGNed starts, a page header on every page (long on a
// segment's first), XLP_FIRST_IS_CONTRECORD and xlp_rem_len on pages that
// continue a record, xl_prev chained and xl_crc computed.
type walGen struct {
	magic     uint16
	page      int
	segSize   int
	sysid     uint64
	tli       uint32
	first     uint64 // first segment number
	pageExtra uint16 // flags added to every page (e.g. BKP_REMOVABLE)
	data      []byte
	pos       int
	prev      pg.LSN
}

func newGen(magic uint16) *walGen {
	return &walGen{magic: magic, page: 8192, segSize: 1 << 20, sysid: 7000000000000000001, tli: 1, first: 3, pageExtra: 0x4}
}

func (g *walGen) lsn(off int) pg.LSN { return pg.LSN(g.first*uint64(g.segSize) + uint64(off)) }

func (g *walGen) grow(n int) {
	for len(g.data) < n {
		g.data = append(g.data, make([]byte, g.segSize)...)
	}
}

func (g *walGen) header(off int, rem uint32) int {
	g.grow(off + g.page)
	b := g.data[off:]
	le := binary.LittleEndian
	info := g.pageExtra
	if rem > 0 {
		info |= 0x1
	}
	size := shortPageHeader
	if off%g.segSize == 0 {
		info |= 0x2
		size = longPageHeader
		le.PutUint64(b[24:], g.sysid)
		le.PutUint32(b[32:], uint32(g.segSize))
		le.PutUint32(b[36:], uint32(g.page))
	}
	le.PutUint16(b, g.magic)
	le.PutUint16(b[2:], info)
	le.PutUint32(b[4:], g.tli)
	le.PutUint64(b[8:], uint64(g.lsn(off)))
	le.PutUint32(b[16:], rem)
	return size
}

// add places rec (a record without xl_prev and xl_crc) and returns its LSN.
func (g *walGen) add(rec []byte) pg.LSN {
	rec = append([]byte(nil), rec...)
	le := binary.LittleEndian
	le.PutUint64(rec[8:], uint64(g.prev))
	le.PutUint32(rec[20:], crc32cCombine(crc32c(rec[24:]), crc32c(rec[:20]), 20))
	g.pos = maxAlign(g.pos)
	if g.pos%g.page == 0 {
		g.pos += g.header(g.pos, 0)
	}
	lsn := g.lsn(g.pos)
	for len(rec) > 0 {
		g.grow(g.pos + 1)
		pageEnd := (g.pos/g.page + 1) * g.page
		n := copy(g.data[g.pos:pageEnd], rec)
		g.pos += n
		rec = rec[n:]
		if len(rec) > 0 {
			g.pos += g.header(g.pos, uint32(len(rec)))
		}
	}
	g.prev = lsn
	return lsn
}

// seg returns segment i (from 0) and its name.
func (g *walGen) seg(i int) ([]byte, string) {
	g.grow((i + 1) * g.segSize)
	segno := g.first + uint64(i)
	per := uint64(pg.SegmentsPerLog(int64(g.segSize)))
	return g.data[i*g.segSize : (i+1)*g.segSize], pg.SegmentName(g.tli, uint32(segno/per), uint32(segno%per))
}

// tBlock is a block reference to encode; rel nil means BKPBLOCK_SAME_REL.
type tBlock struct {
	id       uint8
	fork     uint8
	rel      *RelFork
	blk      uint32
	data     []byte
	image    []byte // the stored image bytes (compressed or with the hole cut)
	bimg     uint8
	holeOff  uint16
	holeLen  uint16 // written only for compressed images with a hole
	willInit bool
}

// mkRecord encodes a record the way XLogRecordAssemble does.
func mkRecord(rmid, info uint8, blocks []tBlock, main []byte, xid uint32, topXID *uint32) []byte {
	le := binary.LittleEndian
	hdr := make([]byte, recordHeaderSize)
	var payload []byte
	compressedMask := uint8(0x4 | 0x8 | 0x10)
	for _, b := range blocks {
		hdr = append(hdr, b.id)
		ff := b.fork
		if b.image != nil {
			ff |= bkpHasImage
		}
		if b.data != nil {
			ff |= bkpHasData
		}
		if b.willInit {
			ff |= bkpWillInit
		}
		if b.rel == nil {
			ff |= bkpSameRel
		}
		hdr = append(hdr, ff)
		hdr = le.AppendUint16(hdr, uint16(len(b.data)))
		if b.image != nil {
			hdr = le.AppendUint16(hdr, uint16(len(b.image)))
			hdr = le.AppendUint16(hdr, b.holeOff)
			hdr = append(hdr, b.bimg)
			if b.bimg&compressedMask != 0 && b.bimg&0x1 != 0 {
				hdr = le.AppendUint16(hdr, b.holeLen)
			}
		}
		if b.rel != nil {
			hdr = le.AppendUint32(hdr, b.rel.Spc)
			hdr = le.AppendUint32(hdr, b.rel.DB)
			hdr = le.AppendUint32(hdr, b.rel.Rel)
		}
		hdr = le.AppendUint32(hdr, b.blk)
	}
	for _, b := range blocks {
		payload = append(payload, b.image...)
		payload = append(payload, b.data...)
	}
	if topXID != nil {
		hdr = append(hdr, blockIDTopXID)
		hdr = le.AppendUint32(hdr, *topXID)
	}
	if len(main) > 0 {
		if len(main) < 256 {
			hdr = append(hdr, blockIDDataShort, uint8(len(main)))
		} else {
			hdr = append(hdr, blockIDDataLong)
			hdr = le.AppendUint32(hdr, uint32(len(main)))
		}
		payload = append(payload, main...)
	}
	rec := append(hdr, payload...)
	le.PutUint32(rec, uint32(len(rec)))
	le.PutUint32(rec[4:], xid)
	rec[16] = info
	rec[17] = rmid
	return rec
}

// Main-data encoders for the records the map reads.
func relBytes(k RelFork) []byte {
	le := binary.LittleEndian
	b := le.AppendUint32(nil, k.Spc)
	b = le.AppendUint32(b, k.DB)
	return le.AppendUint32(b, k.Rel)
}

func smgrCreateRec(k RelFork) []byte {
	main := binary.LittleEndian.AppendUint32(relBytes(k), uint32(k.Fork))
	return mkRecord(RmSmgr, smgrCreate|xlrSpecialRelUpdate, nil, main, 0, nil)
}

func smgrTruncateRec(k RelFork, blk uint32, flags uint32) []byte {
	le := binary.LittleEndian
	main := le.AppendUint32(nil, blk)
	main = append(main, relBytes(k)...)
	main = le.AppendUint32(main, flags)
	return mkRecord(RmSmgr, smgrTruncate|xlrSpecialRelUpdate, nil, main, 0, nil)
}

func commitRec(rels []RelFork, subxacts int) []byte {
	le := binary.LittleEndian
	main := le.AppendUint64(nil, 123456789) // xact_time
	xinfo := uint32(xinfoHasDBInfo | xinfoHasRelfiles)
	if subxacts > 0 {
		xinfo |= xinfoHasSubxacts
	}
	main = le.AppendUint32(main, xinfo)
	main = le.AppendUint32(main, 5)    // dbId
	main = le.AppendUint32(main, 1663) // tsId
	if subxacts > 0 {
		main = le.AppendUint32(main, uint32(subxacts))
		for i := 0; i < subxacts; i++ {
			main = le.AppendUint32(main, uint32(1000+i))
		}
	}
	main = le.AppendUint32(main, uint32(len(rels)))
	for _, k := range rels {
		main = append(main, relBytes(k)...)
	}
	return mkRecord(RmXact, xactCommit|xactHasInfo|xlrSpecialRelUpdate, nil, main, 900, nil)
}

func u32s(vs ...uint32) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint32(b, v)
	}
	return b
}

// heapRec is a small heap record touching blk of k.
func heapRec(k RelFork, blk uint32, sameRelBlk ...uint32) []byte {
	bs := []tBlock{{id: 0, rel: &k, blk: blk, fork: k.Fork, data: []byte("tuple data")}}
	for i, b := range sameRelBlk {
		bs = append(bs, tBlock{id: uint8(i + 1), fork: k.Fork, blk: b, data: []byte{1}})
	}
	return mkRecord(10, 0x00, bs, []byte{1, 2, 3, 4, 5, 6, 7, 8}, 700, nil)
}

func switchRec() []byte { return mkRecord(RmXLOG, xlogSwitch, nil, nil, 0, nil) }

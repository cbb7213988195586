package walmap

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/pgkeep/pgkeep/pg"
)

// RelFork names one fork of one relation: RelFileNode/RelFileLocator
// {spcOid, dbOid, relNumber} and the fork number (0 main, 1 fsm, 2 vm, 3 init).
type RelFork struct {
	Spc, DB, Rel uint32
	Fork         uint8
}

// Fork numbers.
const (
	ForkMain = 0
	ForkFSM  = 1
	ForkVM   = 2
	ForkInit = 3
	maxFork  = ForkInit
)

func (k RelFork) String() string {
	return fmt.Sprintf("%d/%d/%d.%d", k.Spc, k.DB, k.Rel, k.Fork)
}

func (k RelFork) less(o RelFork) bool {
	if k.Spc != o.Spc {
		return k.Spc < o.Spc
	}
	if k.DB != o.DB {
		return k.DB < o.DB
	}
	if k.Rel != o.Rel {
		return k.Rel < o.Rel
	}
	return k.Fork < o.Fork
}

// Compression is how a block image is compressed.
type Compression uint8

const (
	CompressNone Compression = iota
	CompressPGLZ
	CompressLZ4
	CompressZstd
)

// BlockRef is one block reference of a record (XLogRecordBlockHeader and
// what follows it).
type BlockRef struct {
	ID uint8
	RelFork
	Block     uint32
	ForkFlags uint8
	// SameRel: the record did not repeat the relation (BKPBLOCK_SAME_REL).
	SameRel, HasImage, HasData, WillInit bool
	DataLen                              uint16
	// Image fields, when HasImage.
	ImageLen, HoleOffset, HoleLen uint16
	BimgInfo                      uint8
	ApplyImage                    bool
	Compression                   Compression
}

// Record is one decoded WAL record header. Blocks and Main alias the
// walker's buffers: they are valid only during the callback.
type Record struct {
	LSN, End pg.LSN // where the record starts and where it ends
	TotLen   uint32
	XID      uint32
	Prev     pg.LSN
	Info     uint8
	RmID     uint8
	Blocks   []BlockRef
	MainLen  uint32
	// Main is the main data, or nil when it is not at hand (a record whose
	// end lies in the next segment).
	Main      []byte
	TopXID    uint32
	HasTopXID bool
	Origin    uint16
	HasOrigin bool
	// Verified says the record's CRC-32C was checked and matched; false
	// only for the last record of a segment that continues in the next one.
	Verified bool

	l *layout
}

var errShort = errors.New("record header continues past the bytes at hand")

// decodeRecord decodes rec, the first len(rec) bytes of a record of tot
// bytes, into r (DecodeXLogRecord's header walk). It returns errShort when
// rec ends before the block headers do; any other error means the record
// is malformed. It runs once per record: no closures, no copies of block
// references (a third of the walk's time went here).
func decodeRecord(l *layout, rec []byte, tot uint32, r *Record) error {
	le := binary.LittleEndian
	if len(rec) < recordHeaderSize {
		return errShort
	}
	r.TotLen = tot
	r.XID = le.Uint32(rec[4:])
	r.Prev = pg.LSN(le.Uint64(rec[8:]))
	r.Info = rec[16]
	r.RmID = rec[17]
	r.Blocks = r.Blocks[:0]
	r.Main, r.MainLen, r.HasTopXID, r.HasOrigin = nil, 0, false, false
	if tot < recordHeaderSize {
		return fmt.Errorf("record length %d", tot)
	}
	remaining := tot - recordHeaderSize
	var datatotal uint32
	p := recordHeaderSize
	maxID := -1
	n := len(rec)
	// need(k) of DecodeXLogRecord: k more header bytes must be in the
	// record (else it is malformed) and at hand (else errShort).
	for remaining > datatotal {
		if 1 > remaining || p+1 > n {
			return needErr(1, remaining, p, n, tot)
		}
		id := rec[p]
		p++
		remaining--
		switch {
		case id == blockIDDataShort:
			if 1 > remaining || p+1 > n {
				return needErr(1, remaining, p, n, tot)
			}
			r.MainLen = uint32(rec[p])
			p++
			remaining--
			datatotal += r.MainLen
			goto done
		case id == blockIDDataLong:
			if 4 > remaining || p+4 > n {
				return needErr(4, remaining, p, n, tot)
			}
			r.MainLen = le.Uint32(rec[p:])
			p += 4
			remaining -= 4
			datatotal += r.MainLen
			goto done
		case id == blockIDOrigin:
			if 2 > remaining || p+2 > n {
				return needErr(2, remaining, p, n, tot)
			}
			r.Origin, r.HasOrigin = le.Uint16(rec[p:]), true
			p += 2
			remaining -= 2
		case id == blockIDTopXID && l.hasTopLevelXID:
			if 4 > remaining || p+4 > n {
				return needErr(4, remaining, p, n, tot)
			}
			r.TopXID, r.HasTopXID = le.Uint32(rec[p:]), true
			p += 4
			remaining -= 4
		case id <= maxBlockID:
			if int(id) <= maxID {
				return fmt.Errorf("out-of-order block id %d", id)
			}
			maxID = int(id)
			if 3 > remaining || p+3 > n {
				return needErr(3, remaining, p, n, tot)
			}
			r.Blocks = append(r.Blocks, BlockRef{})
			b := &r.Blocks[len(r.Blocks)-1]
			ff := rec[p]
			b.ID, b.ForkFlags = id, ff
			b.Fork = ff & bkpForkMask
			b.HasImage = ff&bkpHasImage != 0
			b.HasData = ff&bkpHasData != 0
			b.WillInit = ff&bkpWillInit != 0
			b.SameRel = ff&bkpSameRel != 0
			b.DataLen = le.Uint16(rec[p+1:])
			p += 3
			remaining -= 3
			if b.Fork > maxFork {
				return fmt.Errorf("block %d: fork %d", id, b.Fork)
			}
			if b.HasData != (b.DataLen > 0) {
				return fmt.Errorf("block %d: has-data %v with data length %d", id, b.HasData, b.DataLen)
			}
			datatotal += uint32(b.DataLen)
			if b.HasImage {
				if 5 > remaining || p+5 > n {
					return needErr(5, remaining, p, n, tot)
				}
				b.ImageLen = le.Uint16(rec[p:])
				b.HoleOffset = le.Uint16(rec[p+2:])
				b.BimgInfo = rec[p+4]
				p += 5
				remaining -= 5
				var err error
				if p, remaining, err = imageInfo(l, b, p, remaining, rec, tot); err != nil {
					return err
				}
				datatotal += uint32(b.ImageLen)
			}
			if !b.SameRel {
				if 12 > remaining || p+12 > n {
					return needErr(12, remaining, p, n, tot)
				}
				b.Spc, b.DB, b.Rel = le.Uint32(rec[p:]), le.Uint32(rec[p+4:]), le.Uint32(rec[p+8:])
				p += 12
				remaining -= 12
			} else {
				if len(r.Blocks) == 1 {
					return fmt.Errorf("block %d: BKPBLOCK_SAME_REL without a previous relation", id)
				}
				last := &r.Blocks[len(r.Blocks)-2]
				b.Spc, b.DB, b.Rel = last.Spc, last.DB, last.Rel
			}
			if 4 > remaining || p+4 > n {
				return needErr(4, remaining, p, n, tot)
			}
			b.Block = le.Uint32(rec[p:])
			p += 4
			remaining -= 4
		default:
			return fmt.Errorf("invalid block id %d", id)
		}
	}
done:
	if remaining != datatotal {
		return fmt.Errorf("record of %d bytes: headers leave %d bytes, blocks and main data need %d", tot, remaining, datatotal)
	}
	if r.MainLen > 0 && uint32(len(rec)) == tot {
		r.Main = rec[tot-r.MainLen:]
	}
	return nil
}

// needErr is the error for k header bytes that are not in the record
// (remaining bytes left of tot) or not at hand (p+k past n).
//
//go:noinline
func needErr(k int, remaining uint32, p, n int, tot uint32) error {
	if uint32(k) > remaining {
		return fmt.Errorf("record header runs past the record's %d bytes", tot)
	}
	if p+k > n {
		return errShort
	}
	return nil
}

// imageInfo reads the rest of a block image header from rec at p (with
// remaining bytes of the record left) and checks it as DecodeXLogRecord
// does; the flag numbering is per version. It returns the new p and
// remaining.
func imageInfo(l *layout, b *BlockRef, p int, remaining uint32, rec []byte, tot uint32) (int, uint32, error) {
	// Images are of BLCKSZ pages. walmap assumes the default 8 KiB: with
	// another BLCKSZ these checks fail, so the walk ends in an invalid
	// marker, never in a wrong map.
	const blcksz = 8192
	hasHole := b.BimgInfo&l.bimgHasHole != 0
	compressed := b.BimgInfo&l.bimgCompressMask != 0
	b.ApplyImage = b.BimgInfo&l.bimgApply != 0
	switch {
	case !compressed:
		b.Compression = CompressNone
	case b.BimgInfo&l.bimgPGLZ != 0:
		b.Compression = CompressPGLZ
	case b.BimgInfo&l.bimgLZ4 != 0:
		b.Compression = CompressLZ4
	default:
		b.Compression = CompressZstd
	}
	if known := l.bimgHasHole | l.bimgApply | l.bimgCompressMask; b.BimgInfo&^known != 0 {
		return p, remaining, fmt.Errorf("block %d: unknown image flags %#x", b.ID, b.BimgInfo)
	}
	if compressed && l.major >= 15 && b.BimgInfo&l.bimgCompressMask&(b.BimgInfo&l.bimgCompressMask-1) != 0 {
		return p, remaining, fmt.Errorf("block %d: more than one image compression flag %#x", b.ID, b.BimgInfo)
	}
	if compressed {
		if hasHole {
			if 2 > remaining || p+2 > len(rec) {
				return p, remaining, needErr(2, remaining, p, len(rec), tot)
			}
			b.HoleLen = binary.LittleEndian.Uint16(rec[p:])
			p += 2
			remaining -= 2
		}
	} else {
		b.HoleLen = uint16(blcksz - int(b.ImageLen))
	}
	switch {
	case hasHole && (b.HoleOffset == 0 || b.HoleLen == 0 || b.ImageLen == blcksz):
		return p, remaining, fmt.Errorf("block %d: image with hole offset %d length %d image %d", b.ID, b.HoleOffset, b.HoleLen, b.ImageLen)
	case !hasHole && (b.HoleOffset != 0 || b.HoleLen != 0):
		return p, remaining, fmt.Errorf("block %d: image without hole flag has hole offset %d length %d", b.ID, b.HoleOffset, b.HoleLen)
	case compressed && b.ImageLen == blcksz:
		return p, remaining, fmt.Errorf("block %d: compressed image of %d bytes", b.ID, b.ImageLen)
	case !hasHole && !compressed && b.ImageLen != blcksz:
		return p, remaining, fmt.Errorf("block %d: uncompressed image of %d bytes", b.ID, b.ImageLen)
	}
	return p, remaining, nil
}

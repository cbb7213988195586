package walmap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/pgkeep/pgkeep/pg"
)

// Encoding: docs/format-walmap.md. Marshal is deterministic, and Unmarshal
// accepts only what Marshal writes (minimal varints, sorted and maximal
// block runs), so equal maps have equal bytes.
const (
	encMagic   = "PGKM"
	encVersion = 1
	maxBlock   = math.MaxUint32 - 1 // InvalidBlockNumber is not a block
)

// ErrCorrupt means bytes are not a map this version of pgkeep can read.
var ErrCorrupt = errors.New("walmap: not a valid block map")

type encoder struct{ b []byte }

func (e *encoder) uv(v uint64)  { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) u8(v uint8)   { e.b = append(e.b, v) }
func (e *encoder) u16(v uint16) { e.b = binary.LittleEndian.AppendUint16(e.b, v) }
func (e *encoder) u32(v uint32) { e.b = binary.LittleEndian.AppendUint32(e.b, v) }
func (e *encoder) u64(v uint64) { e.b = binary.LittleEndian.AppendUint64(e.b, v) }

func (e *encoder) frag(f *Fragment) {
	if f == nil {
		e.u8(0)
		return
	}
	e.u8(1)
	e.uv(uint64(f.LSN))
	e.uv(uint64(f.TotLen))
	e.uv(uint64(f.RemLen))
	e.uv(uint64(f.Len))
	e.uv(uint64(len(f.Prefix)))
	e.b = append(e.b, f.Prefix...)
	e.u32(f.RestCRC)
	e.u8(b2u(f.Applied))
}

func b2u(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// Marshal encodes m.
func (m *Map) Marshal() []byte {
	e := &encoder{b: make([]byte, 0, 256)}
	e.b = append(e.b, encMagic...)
	e.u8(encVersion)
	e.uv(uint64(m.ParserVersion))
	e.u16(m.WALMagic)
	e.u64(m.SystemID)
	e.uv(uint64(m.Timeline))
	e.uv(uint64(m.SegmentSize))
	e.uv(uint64(m.WALBlockSize))
	e.uv(uint64(m.Start))
	e.uv(uint64(m.End - m.Start))
	e.uv(uint64(m.FirstRecord))
	e.uv(uint64(m.LastRecord))
	e.uv(uint64(m.FirstPrev))
	e.uv(m.Records)
	e.uv(uint64(m.Flags))
	e.b = append(e.b, m.SegmentSHA256[:]...)
	e.frag(m.Head)
	e.frag(m.Tail)
	e.uv(uint64(len(m.Events)))
	for _, ev := range m.Events {
		e.u8(uint8(ev.Kind))
		e.uv(uint64(ev.LSN))
		e.uv(uint64(ev.Spc))
		e.uv(uint64(ev.DB))
		e.uv(uint64(ev.SrcSpc))
		e.uv(uint64(ev.SrcDB))
	}
	e.uv(uint64(len(m.Unknown)))
	for _, u := range m.Unknown {
		e.uv(uint64(u.Start))
		e.uv(uint64(u.End - u.Start))
		e.u8(uint8(u.Reason))
		e.u8(u.RmID)
		e.u8(u.Info)
	}
	e.uv(uint64(len(m.Forks)))
	for i := range m.Forks {
		f := &m.Forks[i]
		e.uv(uint64(f.Spc))
		e.uv(uint64(f.DB))
		e.uv(uint64(f.Rel))
		e.u8(f.Fork)
		e.uv(uint64(f.Limit + 1)) // NoLimit wraps to 0: one byte
		// Runs of consecutive blocks: count, then per run the distance from
		// the end of the previous one (start - (prevEnd+2), the first from
		// 0) and its length - 1.
		runs := 0
		for j := 0; j < len(f.Blocks); j++ {
			if j == 0 || f.Blocks[j] != f.Blocks[j-1]+1 {
				runs++
			}
		}
		e.uv(uint64(runs))
		next := uint64(0) // lowest start the next run may have
		for j := 0; j < len(f.Blocks); {
			k := j
			for k+1 < len(f.Blocks) && f.Blocks[k+1] == f.Blocks[k]+1 {
				k++
			}
			e.uv(uint64(f.Blocks[j]) - next)
			e.uv(uint64(k - j))
			next = uint64(f.Blocks[k]) + 2
			j = k + 1
		}
	}
	e.u32(crc32c(e.b))
	return e.b
}

type decoder struct {
	b      []byte
	err    error
	blocks uint64
}

// maxDecodeBlocks bounds the blocks one map may hold in memory (256 MiB
// of block numbers): a map of a fully rewritten 256 GiB cluster.
var maxDecodeBlocks uint64 = 1 << 25

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) uv(max uint64) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("truncated varint")
		return 0
	}
	var tmp [binary.MaxVarintLen64]byte
	if binary.PutUvarint(tmp[:], v) != n {
		d.fail("non-minimal varint")
		return 0
	}
	if v > max {
		d.fail("value %d above %d", v, max)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return make([]byte, n)
	}
	if n < 0 || len(d.b) < n {
		d.fail("truncated")
		return make([]byte, max(n, 0))
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8() uint8   { return d.take(1)[0] }
func (d *decoder) u16() uint16 { return binary.LittleEndian.Uint16(d.take(2)) }
func (d *decoder) u32() uint32 { return binary.LittleEndian.Uint32(d.take(4)) }
func (d *decoder) u64() uint64 { return binary.LittleEndian.Uint64(d.take(8)) }

func (d *decoder) bool() bool {
	v := d.u8()
	if v > 1 {
		d.fail("boolean %d", v)
	}
	return v == 1
}

func (d *decoder) frag() *Fragment {
	if !d.bool() || d.err != nil {
		return nil
	}
	f := &Fragment{
		LSN:    pg.LSN(d.uv(math.MaxUint64)),
		TotLen: uint32(d.uv(math.MaxUint32)),
		RemLen: uint32(d.uv(math.MaxUint32)),
		Len:    uint32(d.uv(math.MaxUint32)),
	}
	n := int(d.uv(FragmentCap))
	if n != min(int(f.Len), FragmentCap) {
		d.fail("fragment keeps %d of its %d bytes", n, f.Len)
		return nil
	}
	f.Prefix = append([]byte(nil), d.take(n)...)
	f.RestCRC = d.u32()
	f.Applied = d.bool()
	return f
}

// Unmarshal decodes a map written by Marshal.
func Unmarshal(b []byte) (*Map, error) {
	if len(b) < len(encMagic)+1+4 || string(b[:len(encMagic)]) != encMagic {
		return nil, fmt.Errorf("%w: no map header", ErrCorrupt)
	}
	if v := b[len(encMagic)]; v != encVersion {
		return nil, fmt.Errorf("%w: encoding version %d (this pgkeep reads %d)", ErrCorrupt, v, encVersion)
	}
	body := b[:len(b)-4]
	if got, want := crc32c(body), binary.LittleEndian.Uint32(b[len(b)-4:]); got != want {
		return nil, fmt.Errorf("%w: CRC-32C %08x, stored %08x", ErrCorrupt, got, want)
	}
	d := &decoder{b: body[len(encMagic)+1:]}
	const u32, u64 = math.MaxUint32, math.MaxUint64
	m := &Map{ParserVersion: uint32(d.uv(u32))}
	m.WALMagic = d.u16()
	m.SystemID = d.u64()
	m.Timeline = uint32(d.uv(u32))
	m.SegmentSize = uint32(d.uv(u32))
	m.WALBlockSize = uint32(d.uv(u32))
	m.Start = pg.LSN(d.uv(u64))
	m.End = m.Start + pg.LSN(d.uv(u64-uint64(m.Start)))
	m.FirstRecord = pg.LSN(d.uv(u64))
	m.LastRecord = pg.LSN(d.uv(u64))
	m.FirstPrev = pg.LSN(d.uv(u64))
	m.Records = d.uv(u64)
	m.Flags = uint32(d.uv(flagsKnown))
	copy(m.SegmentSHA256[:], d.take(32))
	m.Head = d.frag()
	m.Tail = d.frag()
	n := d.uv(uint64(len(d.b)))
	for i := uint64(0); i < n && d.err == nil; i++ {
		ev := Event{Kind: EventKind(d.u8())}
		ev.LSN = pg.LSN(d.uv(u64))
		ev.Spc, ev.DB = uint32(d.uv(u32)), uint32(d.uv(u32))
		ev.SrcSpc, ev.SrcDB = uint32(d.uv(u32)), uint32(d.uv(u32))
		if ev.Kind == 0 || ev.Kind > maxEventKind {
			d.fail("event kind %d", ev.Kind)
		}
		if i > 0 && ev.LSN < m.Events[i-1].LSN {
			d.fail("events out of LSN order")
		}
		m.Events = append(m.Events, ev)
	}
	n = d.uv(uint64(len(d.b)))
	for i := uint64(0); i < n && d.err == nil; i++ {
		u := Unknown{Start: pg.LSN(d.uv(u64))}
		u.End = u.Start + pg.LSN(d.uv(u64-uint64(u.Start)))
		u.Reason, u.RmID, u.Info = UnknownReason(d.u8()), d.u8(), d.u8()
		if u.Reason == 0 || u.Reason > maxUnknownReason {
			d.fail("unknown-marker reason %d", u.Reason)
		}
		if i > 0 && u.Start < m.Unknown[i-1].Start {
			d.fail("unknown markers out of LSN order")
		}
		m.Unknown = append(m.Unknown, u)
	}
	n = d.uv(uint64(len(d.b)))
	for i := uint64(0); i < n && d.err == nil; i++ {
		f := Fork{RelFork: RelFork{Spc: uint32(d.uv(u32)), DB: uint32(d.uv(u32)), Rel: uint32(d.uv(u32)), Fork: d.u8()}}
		f.Limit = uint32(d.uv(u32)) - 1
		if f.Fork > maxFork {
			d.fail("fork %d", f.Fork)
		}
		if i > 0 && !m.Forks[i-1].RelFork.less(f.RelFork) {
			d.fail("forks out of order at %s", f.RelFork)
		}
		runs := d.uv(uint64(len(d.b)))
		next := uint64(0)
		for r := uint64(0); r < runs && d.err == nil; r++ {
			start := next + d.uv(maxBlock)
			length := d.uv(maxBlock) + 1
			if start+length-1 > maxBlock {
				d.fail("block %d", start+length-1)
				break
			}
			if d.blocks += length; d.blocks > maxDecodeBlocks {
				d.fail("more than %d blocks", maxDecodeBlocks)
				break
			}
			for blk := start; blk < start+length; blk++ {
				f.Blocks = append(f.Blocks, uint32(blk))
			}
			next = start + length + 1
		}
		m.Forks = append(m.Forks, f)
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d bytes after the map", len(d.b))
	}
	if d.err != nil {
		return nil, d.err
	}
	return m, nil
}

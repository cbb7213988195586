// Package walmap walks the records of one WAL segment and builds its block
// map: which relation blocks the segment's records touched, which relation
// forks were created or truncated (limit blocks), which databases and
// tablespaces were created or dropped, and "unknown" markers for every part
// of the segment it does not fully understand. It is pure: it takes the
// segment's bytes and its name, and leaves storage and policy to callers.
//
// A map is a hint for incremental backups, never the sole truth: see
// docs/format-walmap.md and the trust rules there.
package walmap

// layout is what differs between WAL format versions (XLOG_PAGE_MAGIC):
// page flag bits, the block image flags, the block ids that exist, and the
// database rmgr's opcodes.
type layout struct {
	magic uint16
	major int

	// xlp_info bits.
	pageContRecord, pageLongHeader, pageOverwrite, pageFlagMask uint16

	// bimg_info bits. compressMask is the bits that say "compressed" (one
	// bit up to 14, one per method from 15).
	bimgHasHole, bimgApply, bimgCompressMask uint8
	bimgPGLZ, bimgLZ4, bimgZstd              uint8

	hasTopLevelXID bool // block id 252 (14+)
	customRmgrs    bool // rmgr ids 128..255 (15+)

	// XLOG_DBASE_* opcodes; dbaseCreateWALLog is 0xFF where it does not exist.
	dbaseCreateFileCopy, dbaseCreateWALLog, dbaseDrop uint8
}

// The WAL format versions walmap knows. A magic not in this table makes
// the whole segment unknown: a new version may renumber anything.
var layouts = map[uint16]*layout{
	0xD106: v13(0xD106, 13),
	0xD10D: v14(),
	0xD110: v15(0xD110, 15),
	0xD113: v15(0xD113, 16),
	0xD116: v15(0xD116, 17),
}

func v13(magic uint16, major int) *layout {
	return &layout{
		magic: magic, major: major,
		pageContRecord: 0x1, pageLongHeader: 0x2, pageOverwrite: 0x8, pageFlagMask: 0xF,
		bimgHasHole: 0x1, bimgCompressMask: 0x2, bimgApply: 0x4,
		// PostgreSQL 13/14 compress images with pglz only.
		bimgPGLZ:            0x2,
		dbaseCreateFileCopy: 0x00, dbaseCreateWALLog: 0xFF, dbaseDrop: 0x10,
	}
}

func v14() *layout {
	l := v13(0xD10D, 14)
	l.hasTopLevelXID = true
	return l
}

func v15(magic uint16, major int) *layout {
	return &layout{
		magic: magic, major: major,
		pageContRecord: 0x1, pageLongHeader: 0x2, pageOverwrite: 0x8, pageFlagMask: 0xF,
		bimgHasHole: 0x1, bimgApply: 0x2, bimgPGLZ: 0x4, bimgLZ4: 0x8, bimgZstd: 0x10,
		bimgCompressMask: 0x4 | 0x8 | 0x10,
		hasTopLevelXID:   true, customRmgrs: true,
		dbaseCreateFileCopy: 0x00, dbaseCreateWALLog: 0x10, dbaseDrop: 0x20,
	}
}

// Major returns the PostgreSQL major version that writes WAL page magic
// m, and false for a magic walmap does not know.
func Major(m uint16) (int, bool) {
	l, ok := layouts[m]
	if !ok {
		return 0, false
	}
	return l.major, true
}

// Resource manager ids (src/include/access/rmgrlist.h, the same 0..21 in
// 13-17) and the opcodes walmap reads.
const (
	RmXLOG       = 0
	RmXact       = 1
	RmSmgr       = 2
	RmDbase      = 4
	RmTblspc     = 5
	rmMaxBuiltin = 21
	rmMinCustom  = 128

	xlogSwitch              = 0x40
	xlogParameterChange     = 0x60
	xlogOverwriteContRecord = 0xD0

	smgrCreate    = 0x10
	smgrTruncate  = 0x20
	smgrTruncHeap = 1
	smgrTruncVM   = 2
	smgrTruncFSM  = 4

	xactCommit         = 0x00
	xactAbort          = 0x20
	xactCommitPrepared = 0x30
	xactAbortPrepared  = 0x40
	xactOpMask         = 0x70
	xactHasInfo        = 0x80
	xinfoHasDBInfo     = 1 << 0
	xinfoHasSubxacts   = 1 << 1
	xinfoHasRelfiles   = 1 << 2

	tblspcCreate = 0x00
	tblspcDrop   = 0x10

	// xl_info low bits.
	xlrSpecialRelUpdate = 0x01
	xlrInfoMask         = 0x0F

	walLevelReplica = 1
)

// Block reference fork_flags bits and block ids (xlogrecord.h).
const (
	bkpForkMask = 0x0F
	bkpHasImage = 0x10
	bkpHasData  = 0x20
	bkpWillInit = 0x40
	bkpSameRel  = 0x80

	maxBlockID       = 32
	blockIDTopXID    = 252
	blockIDOrigin    = 253
	blockIDDataLong  = 254
	blockIDDataShort = 255

	recordHeaderSize = 24
	shortPageHeader  = 24
	longPageHeader   = 40
)

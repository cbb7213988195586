#include "textflag.h"

// func crcBodyHeaderSSE42(crc uint32, body *byte, n int, hdr *byte) uint32
// Updates crc (not inverted) with n bytes at body, then the 20 bytes at
// hdr, 8 bytes per CRC32Q.
TEXT ·crcBodyHeaderSSE42(SB), NOSPLIT, $0-36
	MOVL crc+0(FP), AX
	MOVQ body+8(FP), SI
	MOVQ n+16(FP), CX
	MOVQ hdr+24(FP), DI

loop8:
	CMPQ CX, $8
	JB   less8
	CRC32Q (SI), AX
	ADDQ $8, SI
	SUBQ $8, CX
	JMP  loop8

less8:
	CMPQ CX, $4
	JB   less4
	CRC32L (SI), AX
	ADDQ $4, SI
	SUBQ $4, CX

less4:
	TESTQ CX, CX
	JZ    header
	CRC32B (SI), AX
	INCQ SI
	DECQ CX
	JMP  less4

header:
	CRC32Q 0(DI), AX
	CRC32Q 8(DI), AX
	CRC32L 16(DI), AX
	MOVL AX, ret+32(FP)
	RET

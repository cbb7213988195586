#include "textflag.h"

// PostgreSQL's page checksum step for 32 parallel sums, held in Y0..Y3:
// t = sum ^ word; sum = t*16777619 ^ (t >> 17). Y4..Y7 hold t, Y15 the
// prime in every lane, Y8..Y11 scratch.
#define MIX \
	VPMULLD Y15, Y4, Y0; \
	VPSRLD  $17, Y4, Y8; \
	VPXOR   Y8, Y0, Y0; \
	VPMULLD Y15, Y5, Y1; \
	VPSRLD  $17, Y5, Y9; \
	VPXOR   Y9, Y1, Y1; \
	VPMULLD Y15, Y6, Y2; \
	VPSRLD  $17, Y6, Y10; \
	VPXOR   Y10, Y2, Y2; \
	VPMULLD Y15, Y7, Y3; \
	VPSRLD  $17, Y7, Y11; \
	VPXOR   Y11, Y3, Y3

// func mixRowsAVX2(sums *[32]uint32, first *[128]byte, rest *byte, rows int)
TEXT ·mixRowsAVX2(SB), NOSPLIT, $0-32
	MOVQ sums+0(FP), DI
	MOVQ first+8(FP), SI
	MOVQ rest+16(FP), DX
	MOVQ rows+24(FP), CX
	MOVL $16777619, AX
	MOVQ AX, X15
	VPBROADCASTD X15, Y15
	VMOVDQU 0(DI), Y0
	VMOVDQU 32(DI), Y1
	VMOVDQU 64(DI), Y2
	VMOVDQU 96(DI), Y3
	VPXOR 0(SI), Y0, Y4
	VPXOR 32(SI), Y1, Y5
	VPXOR 64(SI), Y2, Y6
	VPXOR 96(SI), Y3, Y7
	MIX

loop:
	TESTQ CX, CX
	JZ    zeros
	VPXOR 0(DX), Y0, Y4
	VPXOR 32(DX), Y1, Y5
	VPXOR 64(DX), Y2, Y6
	VPXOR 96(DX), Y3, Y7
	MIX
	ADDQ $128, DX
	DECQ CX
	JMP  loop

zeros:
	// Two rounds of zero words: t = sum.
	VMOVDQU Y0, Y4
	VMOVDQU Y1, Y5
	VMOVDQU Y2, Y6
	VMOVDQU Y3, Y7
	MIX
	VMOVDQU Y0, Y4
	VMOVDQU Y1, Y5
	VMOVDQU Y2, Y6
	VMOVDQU Y3, Y7
	MIX
	VMOVDQU Y0, 0(DI)
	VMOVDQU Y1, 32(DI)
	VMOVDQU Y2, 64(DI)
	VMOVDQU Y3, 96(DI)
	VZEROUPPER
	RET

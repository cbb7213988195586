package pg_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/pgkeep/pgkeep/internal/pgtest"
	"github.com/pgkeep/pgkeep/pg"
)

// TestPageChecksumMatchesPostgreSQL checks our checksum against every page
// initdb --data-checksums wrote, and that a flipped bit is caught.
func TestPageChecksumMatchesPostgreSQL(t *testing.T) {
	c := pgtest.New(t, pgtest.TempDir(t), pgtest.Options{InitDBArgs: []string{"--data-checksums"}})
	checked := 0
	err := filepath.Walk(filepath.Join(c.DataDir, "base"), func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(c.DataDir, p)
		segno, ok := pg.ChecksummedFile(filepath.ToSlash(rel))
		if !ok {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for off := 0; off+pg.BlockSize <= len(data); off += pg.BlockSize {
			page := data[off : off+pg.BlockSize]
			if pg.IsNewPage(page) {
				continue
			}
			blk := segno*pg.RelSegBlocks + uint32(off/pg.BlockSize)
			want := pg.ParsePageHeader(page).Checksum
			if got := pg.PageChecksum(page, blk); got != want {
				t.Fatalf("%s block %d: checksum %d, PostgreSQL wrote %d", rel, blk, got, want)
			}
			page[100] ^= 1
			if pg.PageChecksum(page, blk) == want {
				t.Fatalf("%s block %d: bit flip not detected", rel, blk)
			}
			page[100] ^= 1
			checked++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 100 {
		t.Fatalf("only %d pages checked", checked)
	}
}

func TestChecksummedFile(t *testing.T) {
	yes := map[string]uint32{"base/1/1259": 0, "base/5/16384.2": 2, "global/1262_vm": 0, "pg_tblspc/16400/PG_15_202209061/5/16401_fsm.1": 1}
	for p, seg := range yes {
		if s, ok := pg.ChecksummedFile(p); !ok || s != seg {
			t.Errorf("%s: %d %v", p, s, ok)
		}
	}
	for _, p := range []string{"global/pg_control", "base/1/PG_VERSION", "base/1/pg_filenode.map", "pg_xact/0000", "base/1/pg_internal.init"} {
		if _, ok := pg.ChecksummedFile(p); ok {
			t.Errorf("%s treated as a relation file", p)
		}
	}
}

func TestLSN(t *testing.T) {
	l, err := pg.ParseLSN("16/B374D848")
	if err != nil || uint64(l) != 0x16B374D848 || l.String() != "16/B374D848" {
		t.Fatalf("%v %v", l, err)
	}
	if s := l.Segment(3, pg.DefaultSegmentSize).Name; s != "0000000300000016000000B3" {
		t.Fatalf("segment %s", s)
	}
	for _, bad := range []string{"", "1", "x/1", "1/", "/1"} {
		if _, err := pg.ParseLSN(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func BenchmarkPageChecksum(b *testing.B) {
	page := make([]byte, pg.BlockSize)
	for i := range page {
		page[i] = byte(i * 7)
	}
	b.SetBytes(pg.BlockSize)
	for i := 0; i < b.N; i++ {
		pg.PageChecksum(page, uint32(i))
	}
}

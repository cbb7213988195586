package repo

import (
	"strings"
	"testing"
)

// Format 3 fields (small blocks, blocks inside chunks) are refused in
// manifests that claim an older format, and formats above 3 are refused.
func TestManifestFormat3Checks(t *testing.T) {
	mk := func(format int, fileBS, chunkOff int64) *Manifest {
		id := "20261201T000000Z-aaaa"
		return &Manifest{Summary: Summary{ID: id, Format: format}, BlockSize: 4 << 20,
			Packs: []Pack{{Name: PackName(id, 0), Size: 1000}},
			Files: []File{{Path: "base/1/1", Size: 16 << 10, BlockSize: fileBS,
				Blocks: []BlockRef{{Pack: 0, Offset: 0, Length: 500, Size: 8 << 10, ChunkOffset: chunkOff},
					{Pack: 0, Offset: 0, Length: 500, FileOffset: 8 << 10, Size: 8 << 10, ChunkOffset: chunkOff + 8<<10}}}}}
	}
	if err := mk(3, 8<<10, 0).check(); err != nil {
		t.Errorf("format 3 manifest with a chunk of two 8 KiB blocks: %v", err)
	}
	for _, c := range []struct {
		what string
		m    *Manifest
		want string
	}{
		{"chunk offsets in format 2", mk(2, 0, 0), "does not fit"},
		{"a file block size in format 2", mk(2, 8<<10, 0), "block size"},
		{"format 8", mk(8, 8<<10, 0), "newer than this pgkeep"},
		{"a block larger than its file's block size", mk(3, 4<<10, 0), "does not fit"},
		{"a negative chunk offset", mk(3, 8<<10, -1), "does not fit"},
	} {
		err := c.m.check()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want an error saying %q", c.what, err, c.want)
		}
	}
	if m := mk(3, 8<<10, 0); !m.usesChunks() {
		t.Error("usesChunks is false for a file with small blocks")
	}
}

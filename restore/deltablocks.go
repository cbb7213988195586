package restore

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/pgkeep/pgkeep/repo"
)

// hasBlockSums reports whether every block of f records its hash
// (manifests written since incremental backups; a composite block has
// none and is always rewritten), so a delta restore can compare block by
// block.
func hasBlockSums(f *repo.File) bool {
	for _, b := range f.Blocks {
		if !b.HasDigest() && !b.Composite() {
			return false
		}
	}
	return len(f.Blocks) > 0
}

// differingBlocks reads the local copy of f and returns a copy of f whose
// Blocks are those whose local content differs (or is missing), and the
// local file's size; nil without error when there is no local file to
// keep.
func differingBlocks(path string, f *repo.File, blockSize int64) (*repo.File, int64, error) {
	fh, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	defer fh.Close()
	info, err := fh.Stat()
	if err != nil || !info.Mode().IsRegular() {
		return nil, 0, err
	}
	out := *f
	out.Blocks = nil
	buf := make([]byte, blockSize)
	for _, b := range f.Blocks {
		if b.Composite() {
			// No hash of the whole block: rewrite it.
			out.Blocks = append(out.Blocks, b)
			continue
		}
		if b.Size > blockSize {
			return nil, 0, fmt.Errorf("%s: block of %d bytes, block size %d", f.Path, b.Size, blockSize)
		}
		n, err := fh.ReadAt(buf[:b.Size], b.FileOffset)
		if err != nil && err != io.EOF {
			return nil, 0, err
		}
		if int64(n) != b.Size || !b.DigestIs(buf[:n]) {
			out.Blocks = append(out.Blocks, b)
		}
	}
	return &out, info.Size(), nil
}

// truncateTo sets the size of an existing local file.
func truncateTo(path string, size int64) error {
	if err := os.Truncate(path, size); err != nil {
		return fmt.Errorf("delta restore: %w", err)
	}
	return nil
}

package archive

import (
	"bytes"
	"context"
	"log/slog"

	"github.com/pgkeep/pgkeep/repo"
)

// Resume of an interrupted backup (docs/format.md "Resume"): the blocks a
// killed or failed backup stored are listed by its pack indexes; a block
// this backup reads is taken from there when its hash equals the one
// stored for the same file, offset and size (never by size and mtime: the
// file may have changed since), and the interrupted backup's pack is then
// named like a reference's.

// resumeSet is what interrupted backups stored, by file and offset.
type resumeSet struct {
	packs map[string]repo.Pack              // by full name
	files map[string]map[int64]resumedBlock // path -> file offset
}

type resumedBlock struct {
	pack string
	ref  repo.BlockRef
}

// loadResume reads the pack indexes of the interrupted backups ids (which
// the start record already names) into c.resume. One that cannot be read
// is skipped with a warning: resuming is only a saving.
func loadResume(ctx context.Context, r *repo.Repository, c *copier, ids []string, log *slog.Logger) {
	c.resume = resumeSet{packs: map[string]repo.Pack{}, files: map[string]map[int64]resumedBlock{}}
	for _, id := range ids {
		rb, err := r.ReadResumeBlocks(ctx, id)
		if err != nil {
			log.Warn("cannot reuse the blocks of an interrupted backup", "backup", id, "err", err)
			continue
		}
		var bytes int64
		for path, refs := range rb.Files {
			m := c.resume.files[path]
			if m == nil {
				m = map[int64]resumedBlock{}
				c.resume.files[path] = m
			}
			for _, b := range refs {
				if _, ok := m[b.FileOffset]; ok {
					continue // a newer interrupted backup's copy is as good
				}
				m[b.FileOffset] = resumedBlock{pack: rb.Packs[b.Pack].Name, ref: b}
				bytes += b.Size
			}
		}
		for _, p := range rb.Packs {
			c.resume.packs[p.Name] = p
		}
		log.Info("an interrupted backup's stored blocks can be reused", "backup", id, "packs", len(rb.Packs), "bytes", bytes)
	}
}

// reuseInterrupted lists block idx of job j (at file offset off, size
// bytes, hash sum) as an interrupted backup's copy of it when that copy
// has the same offset, size and hash.
func (c *copier) reuseInterrupted(j blockJob, idx int, off int64, small bool, sum []byte, size int64) bool {
	rb, ok := c.resume.files[j.src.Rel][off]
	if !ok || rb.ref.Size != size || rb.ref.Small() != small || !bytes.Equal(rb.ref.DigestBytes(), sum) {
		return false
	}
	c.mu.Lock()
	c.blocks[j.file][idx] = rb.ref
	c.foreign[j.file][idx] = c.foreignNames.of(rb.pack)
	c.mu.Unlock()
	c.stats.resumed.Add(size)
	return true
}

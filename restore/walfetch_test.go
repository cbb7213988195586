package restore

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/pgkeep/pgkeep/pg"
)

// wal-fetch on the in-memory backend: the file lands whole under %p with
// nothing else left behind; a file that is not archived is ErrWALNotFound
// (Missing) and leaves no temporary file; a damaged object is Failed, never
// Missing, and never reaches %p.
func TestFetchWALOnMem(t *testing.T) {
	ctx := context.Background()
	r, m := newMemRepo(t)
	wf, _ := pg.ParseWALFileName(seg)
	// Larger than one writeChunk, so chunkedWriter loops.
	data := someBytes(7, 16<<20)
	if _, err := r.PutWAL(ctx, wf, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	dest := filepath.Join(dir, "RECOVERYXLOG")
	res, err := FetchWAL(ctx, r, FetchOptions{Name: seg, Dest: dest})
	if err != nil || res.Size != int64(len(data)) {
		t.Fatalf("fetch: %+v %v", res, err)
	}
	if got, err := os.ReadFile(dest); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("fetched file differs (%v)", err)
	}
	os.Remove(dest)

	_, err = FetchWAL(ctx, r, FetchOptions{Name: "000000010000000000000009", Dest: dest})
	if Classify(err) != Missing {
		t.Fatalf("not archived: %v, want Missing", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("a missing file left %v", entries)
	}

	if !m.Corrupt("wal/"+seg[:16]+"/"+seg, 1000) {
		t.Fatal("nothing to corrupt")
	}
	_, err = FetchWAL(ctx, r, FetchOptions{Name: seg, Dest: dest})
	if Classify(err) != Failed {
		t.Fatalf("corrupt object: %v, want Failed", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("a corrupt object left %v", entries)
	}
}

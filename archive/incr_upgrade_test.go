package archive

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/mem"
)

// A repository of format 1 (as the previous release wrote it: no ID) is
// upgraded to 3 by the first backup, whose manifest has file maps and
// chunks, keeping the ID it had, so pgkeeps of format 1 (which do not
// check a manifest's format) refuse it from then on instead of restoring
// files without their blocks.
func TestFormat1RepositoryUpgradedByTheFirstBackup(t *testing.T) {
	ctx := context.Background()
	m := mem.New()
	if _, err := repo.Init(ctx, m, repo.InitOptions{CompressionLevel: 1, Now: time.Now()}); err != nil {
		t.Fatal(err)
	}
	rc, err := m.Get(ctx, repo.ConfigObject)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(rc)
	rc.Close()
	var fields map[string]any
	if err := json.Unmarshal(data, &fields); err != nil {
		t.Fatal(err)
	}
	fields["format"] = 1
	delete(fields, "id")
	data, _ = json.Marshal(fields)
	if err := m.Put(ctx, repo.ConfigObject, bytes.NewReader(data), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, m, repo.OpenOptions{CompressionLevel: -1})
	if err != nil {
		t.Fatal(err)
	}
	id := r.ID()
	dir, want := syntheticDataDir(t)
	b, err := writeBackup(ctx, r, BackupOptions{Workers: 2, Writers: 2}.withDefaults(), incrRun("20261201T000000Z-aaaa", dir), stopAt, discard())
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := repo.ReadConfig(ctx, m)
	if err != nil || cfg.Format != 5 || cfg.ID != id || b.Format != 6 {
		t.Errorf("after a format 6 backup: config format %d id %q (%v), backup format %d; want config 5 keeping id %q", cfg.Format, cfg.ID, err, b.Format, id)
	}
	restoreAndCompare(t, r, b, want)
}

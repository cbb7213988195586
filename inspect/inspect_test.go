package inspect

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/storage/fs"
)

func emptyRepo(t *testing.T) *repo.Repository {
	t.Helper()
	ctx := context.Background()
	b, err := fs.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Init(ctx, b, repo.InitOptions{CompressionLevel: 1, Now: time.Now()}); err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, b, repo.OpenOptions{CompressionLevel: -1})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// An empty repository lists as an empty JSON array and a table header;
// info says there is no recovery window; show of an absent backup fails.
func TestEmptyRepository(t *testing.T) {
	r := emptyRepo(t)
	var out bytes.Buffer
	if err := ListBackups(t.Context(), r, true, &out); err != nil || out.String() != "[]\n" {
		t.Fatalf("list --json: %v %q", err, out.String())
	}
	out.Reset()
	if err := ListBackups(t.Context(), r, false, &out); err != nil || !strings.HasPrefix(out.String(), "ID  ") || strings.Count(out.String(), "\n") != 1 {
		t.Fatalf("list: %v %q", err, out.String())
	}
	out.Reset()
	if err := Info(t.Context(), r, false, &out); err != nil || !strings.Contains(out.String(), "recovery window: none (no backup with its WAL archived)") {
		t.Fatalf("info: %v\n%s", err, out.String())
	}
	out.Reset()
	if err := ShowBackup(t.Context(), r, "20261122T180000Z-1a2b", false, &out); !errors.Is(err, repo.ErrBackupNotFound) || out.Len() != 0 {
		t.Fatalf("show of an absent backup: %v %q", err, out.String())
	}
}

package fs

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgkeep/pgkeep/storage"
)

// file:// URLs open through the registry: an absolute path only, a
// missing directory is ErrNotFound unless Create asks for it.
func TestOpenFileURL(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "repo")
	if _, err := storage.Open(ctx, "file://"+dir, storage.Options{}); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("missing directory: %v", err)
	}
	b, err := storage.Open(ctx, "file://"+dir, storage.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	if b.String() != "file://"+dir {
		t.Fatalf("opened %s", b)
	}
	if _, err := storage.Open(ctx, "file://"+dir, storage.Options{}); err != nil {
		t.Fatalf("existing directory: %v", err)
	}
	for _, raw := range []string{"file://host/x", "file:relative/x", "file://"} {
		if _, err := storage.Open(ctx, raw, storage.Options{Create: true}); err == nil || !strings.Contains(err.Error(), "absolute path") {
			t.Errorf("%s: %v", raw, err)
		}
	}
}

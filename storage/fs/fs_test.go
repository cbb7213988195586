package fs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, 20<<20, func(t *testing.T) storage.Backend {
		b, err := Create(filepath.Join(t.TempDir(), "repo"))
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}

func TestNames(t *testing.T) {
	b, err := Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, name := range []string{"", "/abs", "../x", "a/../../x", ".tmp/x", "a\\b", "a//b", "a/"} {
		if err := b.Put(ctx, name, bytes.NewReader(nil), storage.PutOptions{}); err == nil {
			t.Errorf("put %q accepted", name)
		}
		if _, err := b.Get(ctx, name); err == nil {
			t.Errorf("get %q accepted", name)
		}
	}
	// Leftovers of a killed writer are not objects.
	os.MkdirAll(filepath.Join(b.Root(), ".tmp"), 0o750)
	os.WriteFile(filepath.Join(b.Root(), ".tmp", "junk"), []byte("x"), 0o640)
	n := 0
	b.List(ctx, "", func(storage.ObjectInfo) error { n++; return nil })
	if n != 0 {
		t.Fatalf("listed %d objects in an empty repository with .tmp debris", n)
	}
}

func TestNewMissing(t *testing.T) {
	_, err := New(filepath.Join(t.TempDir(), "nope"))
	if !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("New on a missing dir: %v", err)
	}
}

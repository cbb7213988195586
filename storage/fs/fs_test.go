package fs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, 20<<20, func(t *testing.T) storage.Backend {
		b, err := Create(filepath.Join(t.TempDir(), "repo"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { checkNoDebris(t, b) })
		return b
	})
}

// checkNoDebris: a Put that returned, whatever the outcome, left nothing in
// .tmp/ (only a killed writer may).
func checkNoDebris(t *testing.T, b *Backend) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(b.Root(), tmpDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("debris left in .tmp/: %s", e.Name())
	}
}

func TestNames(t *testing.T) {
	b, err := Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, name := range []string{
		"", "/abs", "../x", "a/../../x", "a/../b", "..", ".", "./a", ".tmp", ".tmp/x", ".tmpx",
		"a\\b", "a//b", "a/", "a/./b", "a\x00b",
	} {
		err := b.Put(ctx, name, bytes.NewReader([]byte("x")), storage.PutOptions{})
		if err == nil || !strings.Contains(err.Error(), "invalid object name") {
			t.Errorf("put %q: %v", name, err)
		}
		if _, err := b.Get(ctx, name); err == nil {
			t.Errorf("get %q accepted", name)
		}
		if _, err := b.Stat(ctx, name); err == nil {
			t.Errorf("stat %q accepted", name)
		}
		if err := b.Delete(ctx, name); err == nil {
			t.Errorf("delete %q accepted", name)
		}
	}
	// Dots inside a component are fine: "a..b" is not "..".
	for _, name := range []string{"a.b", "x/.hidden", "wal/00000002.history"} {
		if err := b.Put(ctx, name, bytes.NewReader([]byte("x")), storage.PutOptions{}); err != nil {
			t.Errorf("put %q: %v", name, err)
		}
	}
	// Leftovers of a killed writer are not objects.
	os.MkdirAll(filepath.Join(b.Root(), tmpDir), 0o750)
	os.WriteFile(filepath.Join(b.Root(), tmpDir, "junk"), []byte("x"), 0o640)
	var names []string
	b.List(ctx, "", func(o storage.ObjectInfo) error { names = append(names, o.Name); return nil })
	if strings.Join(names, " ") != "a.b wal/00000002.history x/.hidden" {
		t.Fatalf("listed %q", names)
	}
}

func TestNewAndCreate(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope")
	_, err := New(missing)
	if !errors.Is(err, storage.ErrNotFound) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("New on a missing dir: %v", err)
	}
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o640)
	_, err = New(file)
	if !errors.Is(err, storage.ErrNotFound) || !strings.Contains(err.Error(), file) {
		t.Fatalf("New on a file: %v", err)
	}
	if _, err := Create(filepath.Join(file, "sub")); err == nil {
		t.Fatal("Create below a file succeeded")
	}

	root := filepath.Join(dir, "a", "b", "repo")
	b, err := Create(root)
	if err != nil {
		t.Fatal(err)
	}
	if b.Root() != root || b.String() != "file://"+root {
		t.Fatalf("Root %q String %q", b.Root(), b.String())
	}
	fi, err := os.Stat(root)
	if err != nil || fi.Mode().Perm() != 0o750&^umask() {
		t.Fatalf("root: %v %v", fi.Mode(), err)
	}
	if _, err := Create(root); err != nil {
		t.Fatalf("Create on an existing dir: %v", err)
	}
	if _, err := New(root); err != nil {
		t.Fatalf("New after Create: %v", err)
	}
}

func umask() os.FileMode {
	// The only portable way to read it is to create something.
	dir, _ := os.MkdirTemp("", "umask")
	defer os.RemoveAll(dir)
	p := filepath.Join(dir, "d")
	os.Mkdir(p, 0o777)
	fi, _ := os.Stat(p)
	return 0o777 &^ fi.Mode().Perm()
}

func TestFileModesAndConflicts(t *testing.T) {
	b, err := Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := b.Put(ctx, "x/y/z", strings.NewReader("data"), storage.PutOptions{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(b.Root(), "x", "y", "z"))
	if err != nil || fi.Mode().Perm() != 0o640&^umask() {
		t.Fatalf("object mode %v %v", fi.Mode(), err)
	}
	fi, err = os.Stat(filepath.Join(b.Root(), "x", "y"))
	if err != nil || fi.Mode().Perm() != 0o750&^umask() {
		t.Fatalf("directory mode %v %v", fi.Mode(), err)
	}
	// A name that runs through an object can be neither read nor written.
	if _, err := b.Stat(ctx, "x/y/z/w"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("stat through an object: %v", err)
	}
	if err := b.Put(ctx, "x/y/z/w", strings.NewReader("data"), storage.PutOptions{}); err == nil {
		t.Fatal("put through an object succeeded")
	}
	// A directory is not an object, and cannot be replaced by one.
	if err := b.Put(ctx, "x/y", strings.NewReader("data"), storage.PutOptions{}); err == nil {
		t.Fatal("put over a directory succeeded")
	}
	if err := b.Put(ctx, "x/y", strings.NewReader("data"), storage.PutOptions{IfAbsent: true}); err == nil {
		t.Fatal("IfAbsent put over a directory succeeded")
	}
	if got, _ := os.ReadFile(filepath.Join(b.Root(), "x", "y", "z")); string(got) != "data" {
		t.Fatalf("object changed: %q", got)
	}
	checkNoDebris(t, b)
}

// TestListPrunes: List reads only directories that can hold a match, so a
// "wal/0000000100000000" listing never walks the backups.
func TestListPrunes(t *testing.T) {
	b, err := Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, name := range []string{
		"wal/0000000100000000/000000010000000000000001", "wal/0000000200000000/000000020000000000000001",
		"backups/a/pack/0", "backups/b/pack/0",
	} {
		if err := b.Put(ctx, name, strings.NewReader("x"), storage.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var read []string
	readDir = func(name string) ([]os.DirEntry, error) {
		rel, _ := filepath.Rel(b.Root(), name)
		read = append(read, filepath.ToSlash(rel))
		return os.ReadDir(name)
	}
	t.Cleanup(func() { readDir = os.ReadDir })
	var got []string
	if err := b.List(ctx, "wal/00000001", func(o storage.ObjectInfo) error { got = append(got, o.Name); return nil }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, " ") != "wal/0000000100000000/000000010000000000000001" {
		t.Fatalf("listed %q", got)
	}
	if strings.Join(read, " ") != ". wal wal/0000000100000000" {
		t.Fatalf("read directories %q", read)
	}
}

// TestKilledWriter kills -9 a process in the middle of a Put: the name must
// stay free (nothing partial is visible) and only .tmp/ holds the debris.
func TestKilledWriter(t *testing.T) {
	root := t.TempDir()
	b, err := Create(root)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestKilledWriterChild$")
	cmd.Env = append(os.Environ(), "PGKEEP_TEST_FS_CHILD="+root)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "WRITTEN" {
				ready <- true
				return
			}
		}
		ready <- false
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatal("child exited before writing")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("child did not start writing")
	}
	cmd.Process.Kill() // SIGKILL: no deferred cleanup runs
	cmd.Wait()

	ctx := context.Background()
	if _, err := b.Stat(ctx, "wal/seg"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("killed put left an object: %v", err)
	}
	n := 0
	b.List(ctx, "", func(storage.ObjectInfo) error { n++; return nil })
	if n != 0 {
		t.Fatalf("killed put left %d listed objects", n)
	}
	debris, _ := os.ReadDir(filepath.Join(root, tmpDir))
	if len(debris) != 1 {
		t.Fatalf("want the killed writer's temp file in .tmp/, have %v", debris)
	}
	if err := b.Put(ctx, "wal/seg", strings.NewReader("whole"), storage.PutOptions{IfAbsent: true}); err != nil {
		t.Fatalf("put after the killed writer: %v", err)
	}
}

// TestKilledWriterChild is the process TestKilledWriter kills.
func TestKilledWriterChild(t *testing.T) {
	root := os.Getenv("PGKEEP_TEST_FS_CHILD")
	if root == "" {
		return // only runs as TestKilledWriter's child
	}
	b, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	b.Put(context.Background(), "wal/seg", &stallingReader{data: bytes.Repeat([]byte("x"), 1<<20)}, storage.PutOptions{IfAbsent: true})
	t.Fatal("put returned")
}

// stallingReader hands out data, then says so and blocks forever: by then
// Put has written the data to its temp file.
type stallingReader struct{ data []byte }

func (r *stallingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		os.Stdout.WriteString("WRITTEN\n")
		time.Sleep(time.Hour)
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

var _ io.Reader = (*stallingReader)(nil)

// Package storagetest is the conformance suite every storage.Backend must
// pass, run against real backends (a directory, a real MinIO server).
package storagetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/storage"
)

// Run runs the suite; newBackend returns an empty backend per subtest.
// largeSize should exceed the backend's multipart threshold, if it has one.
func Run(t *testing.T, largeSize int, newBackend func(t *testing.T) storage.Backend) {
	ctx := context.Background()
	put := func(t *testing.T, b storage.Backend, name string, data []byte, ifAbsent bool) error {
		t.Helper()
		return b.Put(ctx, name, bytes.NewReader(data), storage.PutOptions{IfAbsent: ifAbsent})
	}
	get := func(t *testing.T, b storage.Backend, name string) []byte {
		t.Helper()
		rc, err := b.Get(ctx, name)
		if err != nil {
			t.Fatalf("get %s: %v", name, err)
		}
		defer rc.Close()
		data, err := io.ReadAll(rc)
		if err != nil {
			t.Fatalf("read %s: %v", name, err)
		}
		return data
	}
	random := func(n int) []byte {
		b := make([]byte, n)
		rand.Read(b)
		return b
	}

	t.Run("RoundTrip", func(t *testing.T) {
		b := newBackend(t)
		for _, size := range []int{0, 1, 1000, largeSize} {
			name := fmt.Sprintf("dir/sub/obj-%d", size)
			data := random(size)
			if err := put(t, b, name, data, true); err != nil {
				t.Fatalf("put %d bytes: %v", size, err)
			}
			if got := get(t, b, name); !bytes.Equal(got, data) {
				t.Fatalf("%d bytes: got %d different bytes", size, len(got))
			}
			info, err := b.Stat(ctx, name)
			if err != nil || info.Size != int64(size) || info.Name != name {
				t.Fatalf("stat: %+v %v", info, err)
			}
		}
	})

	t.Run("OverwriteAndIfAbsent", func(t *testing.T) {
		b := newBackend(t)
		if err := put(t, b, "a", []byte("one"), false); err != nil {
			t.Fatal(err)
		}
		if err := put(t, b, "a", []byte("two"), false); err != nil {
			t.Fatal(err)
		}
		if got := get(t, b, "a"); string(got) != "two" {
			t.Fatalf("overwrite: %q", got)
		}
		err := put(t, b, "a", []byte("three"), true)
		if !errors.Is(err, storage.ErrExists) {
			t.Fatalf("IfAbsent on existing: %v", err)
		}
		if got := get(t, b, "a"); string(got) != "two" {
			t.Fatalf("IfAbsent changed the object: %q", got)
		}
		big := random(largeSize)
		if err := put(t, b, "big", big, true); err != nil {
			t.Fatal(err)
		}
		if err := put(t, b, "big", random(largeSize), true); !errors.Is(err, storage.ErrExists) {
			t.Fatalf("large IfAbsent on existing: %v", err)
		}
		if !bytes.Equal(get(t, b, "big"), big) {
			t.Fatal("large IfAbsent changed the object")
		}
	})

	t.Run("ConcurrentIfAbsent", func(t *testing.T) {
		b := newBackend(t)
		const n = 8
		datas := make([][]byte, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range datas {
			datas[i] = random(64 << 10)
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = put(t, b, "race", datas[i], true)
			}()
		}
		wg.Wait()
		won := -1
		for i, err := range errs {
			switch {
			case err == nil:
				if won >= 0 {
					t.Fatalf("two IfAbsent puts succeeded: %d and %d", won, i)
				}
				won = i
			case !errors.Is(err, storage.ErrExists):
				t.Fatalf("put %d: %v", i, err)
			}
		}
		if won < 0 {
			t.Fatal("no put succeeded")
		}
		if !bytes.Equal(get(t, b, "race"), datas[won]) {
			t.Fatal("stored content is not the winner's")
		}
	})

	t.Run("Missing", func(t *testing.T) {
		b := newBackend(t)
		if _, err := b.Get(ctx, "nope/x"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("get missing: %v", err)
		}
		if _, err := b.Stat(ctx, "nope/x"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("stat missing: %v", err)
		}
		if err := b.Delete(ctx, "nope/x"); err != nil {
			t.Fatalf("delete missing: %v", err)
		}
	})

	t.Run("GetRange", func(t *testing.T) {
		b := newBackend(t)
		data := random(100000)
		put(t, b, "r", data, true)
		for _, c := range []struct{ off, n int64 }{{0, 10}, {500, 1000}, {99990, 10}, {1000, -1}, {0, -1}, {5, 0}} {
			rc, err := b.GetRange(ctx, "r", c.off, c.n)
			if err != nil {
				t.Fatalf("range %v: %v", c, err)
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			want := data[c.off:]
			if c.n >= 0 {
				want = data[c.off : c.off+c.n]
			}
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("range %v: %d bytes, err %v", c, len(got), err)
			}
		}
		if _, err := b.GetRange(ctx, "missing", 0, 10); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("range of missing: %v", err)
		}
	})

	t.Run("List", func(t *testing.T) {
		b := newBackend(t)
		names := []string{"wal/0000000100000000/000000010000000000000002", "wal/0000000100000000/000000010000000000000001",
			"wal/0000000200000000/000000020000000000000003", "wal/history/00000002.history", "backups/x/pack/000001", "config.json", "wal.txt"}
		for _, n := range names {
			if err := put(t, b, n, []byte(n), true); err != nil {
				t.Fatal(err)
			}
		}
		list := func(prefix string) []string {
			var out []string
			err := b.List(ctx, prefix, func(o storage.ObjectInfo) error {
				if o.Size != int64(len(o.Name)) {
					t.Errorf("%s: size %d", o.Name, o.Size)
				}
				out = append(out, o.Name)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			return out
		}
		cases := map[string]string{
			"":                       "backups/x/pack/000001 config.json wal.txt wal/0000000100000000/000000010000000000000001 wal/0000000100000000/000000010000000000000002 wal/0000000200000000/000000020000000000000003 wal/history/00000002.history",
			"wal/":                   "wal/0000000100000000/000000010000000000000001 wal/0000000100000000/000000010000000000000002 wal/0000000200000000/000000020000000000000003 wal/history/00000002.history",
			"wal/00000001":           "wal/0000000100000000/000000010000000000000001 wal/0000000100000000/000000010000000000000002",
			"wal/0000000100000000/0": "wal/0000000100000000/000000010000000000000001 wal/0000000100000000/000000010000000000000002",
			"wal":                    "wal.txt wal/0000000100000000/000000010000000000000001 wal/0000000100000000/000000010000000000000002 wal/0000000200000000/000000020000000000000003 wal/history/00000002.history",
			"nothing/":               "",
		}
		for prefix, want := range cases {
			if got := strings.Join(list(prefix), " "); got != want {
				t.Errorf("list %q:\n got %s\nwant %s", prefix, got, want)
			}
		}
		stop := errors.New("stop")
		n := 0
		if err := b.List(ctx, "", func(storage.ObjectInfo) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
			t.Fatalf("list stop: %v after %d", err, n)
		}
		if err := b.Delete(ctx, "wal.txt"); err != nil {
			t.Fatal(err)
		}
		if got := list("wal."); len(got) != 0 {
			t.Fatalf("deleted object still listed: %v", got)
		}
	})

	t.Run("FailedPutLeavesNothing", func(t *testing.T) {
		b := newBackend(t)
		boom := errors.New("reader broke")
		r := io.MultiReader(bytes.NewReader(random(largeSize/2+1)), errReader{boom})
		if err := b.Put(ctx, "broken", r, storage.PutOptions{IfAbsent: true}); err == nil {
			t.Fatal("put with a failing reader succeeded")
		}
		if _, err := b.Stat(ctx, "broken"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("failed put left an object: %v", err)
		}
		cctx, cancel := context.WithCancel(ctx)
		pr, pw := io.Pipe()
		go func() {
			pw.Write(random(1000))
			cancel()
			time.Sleep(50 * time.Millisecond)
			pw.Write(random(1000))
			pw.Close()
		}()
		if err := b.Put(cctx, "cancelled", pr, storage.PutOptions{}); err == nil {
			t.Fatal("cancelled put succeeded")
		}
		if _, err := b.Stat(ctx, "cancelled"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("cancelled put left an object: %v", err)
		}
		var listed []string
		b.List(ctx, "", func(o storage.ObjectInfo) error { listed = append(listed, o.Name); return nil })
		if len(listed) != 0 {
			t.Fatalf("failed puts left objects: %v", listed)
		}
	})
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// Package storagetest is the conformance suite every storage.Backend must
// pass, run against real backends (a directory, a real MinIO server): the
// rest of pgkeep relies on exactly these properties, whichever backend holds
// the repository.
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
// largeSize should exceed the backend's multipart threshold, if it has one,
// by more than a part so that "fails halfway" really fails mid-upload
// (0 means 40 MiB).
func Run(t *testing.T, largeSize int, newBackend func(t *testing.T) storage.Backend) {
	if largeSize <= 0 {
		largeSize = 40 << 20
	}
	ctx := context.Background()

	t.Run("RoundTrip", func(t *testing.T) {
		b := newBackend(t)
		for _, size := range []int{0, 1, 1000, largeSize} {
			name := fmt.Sprintf("dir/sub/obj-%d", size)
			data := random(size)
			if err := put(ctx, b, name, data, true); err != nil {
				t.Fatalf("put %d bytes: %v", size, err)
			}
			if got := get(t, b, name); !bytes.Equal(got, data) {
				t.Fatalf("%d bytes: got %d different bytes", size, len(got))
			}
			info, err := b.Stat(ctx, name)
			if err != nil || info.Size != int64(size) || info.Name != name {
				t.Fatalf("stat: %+v %v", info, err)
			}
			if info.ModTime.IsZero() || time.Since(info.ModTime) > time.Hour {
				t.Fatalf("stat %s: implausible ModTime %v", name, info.ModTime)
			}
		}
		// Characters that need escaping in URLs and signatures.
		odd := "backups/2024-01-01T00:00:00+00:00/a b=c,d;ü~%20"
		if err := put(ctx, b, odd, []byte("odd"), true); err != nil {
			t.Fatalf("put %q: %v", odd, err)
		}
		if got := get(t, b, odd); string(got) != "odd" {
			t.Fatalf("get %q: %q", odd, got)
		}
		if names := list(t, b, "backups/"); len(names) != 1 || names[0] != odd {
			t.Fatalf("list odd name: %q", names)
		}
	})

	t.Run("OverwriteAndIfAbsent", func(t *testing.T) {
		b := newBackend(t)
		if err := put(ctx, b, "a", []byte("one"), false); err != nil {
			t.Fatal(err)
		}
		if err := put(ctx, b, "a", []byte("two"), false); err != nil {
			t.Fatal(err)
		}
		if got := get(t, b, "a"); string(got) != "two" {
			t.Fatalf("overwrite: %q", got)
		}
		err := put(ctx, b, "a", []byte("three"), true)
		if !errors.Is(err, storage.ErrExists) {
			t.Fatalf("IfAbsent on existing: %v", err)
		}
		if got := get(t, b, "a"); string(got) != "two" {
			t.Fatalf("IfAbsent changed the object: %q", got)
		}
		// An empty object is an object too.
		if err := put(ctx, b, "empty", nil, true); err != nil {
			t.Fatal(err)
		}
		if err := put(ctx, b, "empty", []byte("x"), true); !errors.Is(err, storage.ErrExists) {
			t.Fatalf("IfAbsent on existing empty object: %v", err)
		}
		// Large objects take the multipart path where there is one.
		big := random(largeSize)
		if err := put(ctx, b, "big", big, true); err != nil {
			t.Fatal(err)
		}
		if err := put(ctx, b, "big", random(largeSize), true); !errors.Is(err, storage.ErrExists) {
			t.Fatalf("large IfAbsent on existing: %v", err)
		}
		if !bytes.Equal(get(t, b, "big"), big) {
			t.Fatal("large IfAbsent changed the object")
		}
		big2 := random(largeSize)
		if err := put(ctx, b, "big", big2, false); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(get(t, b, "big"), big2) {
			t.Fatal("large overwrite not visible")
		}
		if err := put(ctx, b, "a", random(largeSize), true); !errors.Is(err, storage.ErrExists) {
			t.Fatalf("large IfAbsent on existing small object: %v", err)
		}
		if got := get(t, b, "a"); string(got) != "two" {
			t.Fatalf("large IfAbsent changed the object: %.10q", got)
		}
	})

	// Exactly one of n racing creators wins and its bytes are stored intact;
	// everyone else gets ErrExists. wal-push and manifest writes rely on it.
	race := func(t *testing.T, size int) {
		b := newBackend(t)
		const n = 8
		datas := make([][]byte, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range datas {
			datas[i] = random(size)
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				errs[i] = put(ctx, b, "race", datas[i], true)
			}()
		}
		close(start)
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
	}
	t.Run("ConcurrentIfAbsent", func(t *testing.T) { race(t, 64<<10) })
	t.Run("ConcurrentIfAbsentLarge", func(t *testing.T) { race(t, largeSize) })

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
		// A name that is only a "directory" of other objects is no object.
		if err := put(ctx, b, "dir/obj", []byte("x"), true); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"dir", "dir/obj/below"} {
			if _, err := b.Stat(ctx, name); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("stat %s: %v", name, err)
			}
			if _, err := b.Get(ctx, name); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("get %s: %v", name, err)
			}
			if err := b.Delete(ctx, name); err != nil {
				t.Fatalf("delete %s: %v", name, err)
			}
		}
		if got := get(t, b, "dir/obj"); string(got) != "x" {
			t.Fatalf("dir/obj changed: %q", got)
		}
	})

	t.Run("GetRange", func(t *testing.T) {
		b := newBackend(t)
		data := random(100000)
		if err := put(ctx, b, "r", data, true); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct{ off, n int64 }{
			{0, 10}, {500, 1000}, {99990, 10}, {1000, -1}, {0, -1}, {5, 0}, {0, 100000}, {99999, -1},
		} {
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
		for _, n := range []int64{10, 0, -1} {
			if _, err := b.GetRange(ctx, "missing", 0, n); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("range (length %d) of missing: %v", n, err)
			}
		}
	})

	t.Run("List", func(t *testing.T) {
		b := newBackend(t)
		names := []string{
			"wal/0000000100000000/000000010000000000000002", "wal/0000000100000000/000000010000000000000001",
			"wal/0000000200000000/000000020000000000000003", "wal/history/00000002.history",
			"backups/x/pack/000001", "config.json", "wal.txt", "wal0", "wal-b/x",
		}
		for _, n := range names {
			if err := put(ctx, b, n, []byte(n), true); err != nil {
				t.Fatal(err)
			}
		}
		const wal = "wal/0000000100000000/000000010000000000000001 wal/0000000100000000/000000010000000000000002 wal/0000000200000000/000000020000000000000003 wal/history/00000002.history"
		cases := map[string]string{
			// '-' < '.' < '/' < '0': a "directory" sorts by its full names.
			"":                              "backups/x/pack/000001 config.json wal-b/x wal.txt " + wal + " wal0",
			"wal/":                          wal,
			"wal/00000001":                  "wal/0000000100000000/000000010000000000000001 wal/0000000100000000/000000010000000000000002",
			"wal/0000000100000000/0":        "wal/0000000100000000/000000010000000000000001 wal/0000000100000000/000000010000000000000002",
			"wal":                           "wal-b/x wal.txt " + wal + " wal0",
			"wal/history/00000002.history":  "wal/history/00000002.history",
			"wal/history/00000002.historyx": "",
			"nothing/":                      "",
			"c":                             "config.json",
		}
		for prefix, want := range cases {
			if got := strings.Join(list(t, b, prefix), " "); got != want {
				t.Errorf("list %q:\n got %s\nwant %s", prefix, got, want)
			}
		}
		err := b.List(ctx, "", func(o storage.ObjectInfo) error {
			if o.Size != int64(len(o.Name)) || o.ModTime.IsZero() {
				t.Errorf("list: %+v (want size %d, a ModTime)", o, len(o.Name))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		stop := errors.New("stop")
		n := 0
		if err := b.List(ctx, "", func(storage.ObjectInfo) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
			t.Fatalf("list stop: %v after %d", err, n)
		}
		if err := b.Delete(ctx, "wal.txt"); err != nil {
			t.Fatal(err)
		}
		if got := list(t, b, "wal."); len(got) != 0 {
			t.Fatalf("deleted object still listed: %v", got)
		}
		if _, err := b.Get(ctx, "wal.txt"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("get deleted: %v", err)
		}
		// The name is free again.
		if err := put(ctx, b, "wal.txt", []byte("again"), true); err != nil {
			t.Fatalf("put after delete: %v", err)
		}
	})

	t.Run("FailedPutLeavesNothing", func(t *testing.T) {
		b := newBackend(t)
		boom := errors.New("reader broke")
		// Fails inside the first part, and after more than a part.
		for _, n := range []int{1000, largeSize/2 + 1} {
			name := fmt.Sprintf("broken-%d", n)
			r := io.MultiReader(bytes.NewReader(random(n)), errReader{boom})
			if err := b.Put(ctx, name, r, storage.PutOptions{IfAbsent: true}); !errors.Is(err, boom) {
				t.Fatalf("put with a failing reader after %d bytes: %v (want the reader's error)", n, err)
			}
			if _, err := b.Stat(ctx, name); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("failed put left an object: %v", err)
			}
		}
		if got := list(t, b, ""); len(got) != 0 {
			t.Fatalf("failed puts left objects: %v", got)
		}
	})

	t.Run("CancelledPutLeavesNothing", func(t *testing.T) {
		b := newBackend(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := put(cctx, b, "pre-cancelled", []byte("x"), false); err == nil {
			t.Fatal("put with a cancelled context succeeded")
		}
		// Cancelled while the data streams in: inside the first part, and
		// after more than a part.
		for _, n := range []int{1000, largeSize/2 + 1} {
			name := fmt.Sprintf("cancelled-%d", n)
			cctx, cancel := context.WithCancel(ctx)
			pr, pw := io.Pipe()
			go func() {
				pw.Write(random(n))
				cancel()
				time.Sleep(50 * time.Millisecond)
				// Fails once Put has stopped reading (pr closed below).
				pw.Write(random(1000))
				pw.Close()
			}()
			start := time.Now()
			err := b.Put(cctx, name, pr, storage.PutOptions{})
			pr.CloseWithError(errors.New("put returned"))
			if err == nil {
				t.Fatalf("put cancelled after %d bytes succeeded", n)
			}
			if d := time.Since(start); d > 20*time.Second {
				t.Fatalf("cancelled put took %s", d)
			}
			if _, err := b.Stat(ctx, name); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("cancelled put left an object: %v", err)
			}
		}
		if got := list(t, b, ""); len(got) != 0 {
			t.Fatalf("cancelled puts left objects: %v", got)
		}
	})
}

func put(ctx context.Context, b storage.Backend, name string, data []byte, ifAbsent bool) error {
	return b.Put(ctx, name, bytes.NewReader(data), storage.PutOptions{IfAbsent: ifAbsent})
}

func get(t *testing.T, b storage.Backend, name string) []byte {
	t.Helper()
	rc, err := b.Get(context.Background(), name)
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

// list returns the names under prefix and checks sizes (every test object
// but the random ones holds its own name) and order.
func list(t *testing.T, b storage.Backend, prefix string) []string {
	t.Helper()
	var out []string
	err := b.List(context.Background(), prefix, func(o storage.ObjectInfo) error {
		if !strings.HasPrefix(o.Name, prefix) {
			t.Errorf("list %q gave %q", prefix, o.Name)
		}
		if len(out) > 0 && out[len(out)-1] >= o.Name {
			t.Errorf("list %q: %q after %q", prefix, o.Name, out[len(out)-1])
		}
		out = append(out, o.Name)
		return nil
	})
	if err != nil {
		t.Fatalf("list %q: %v", prefix, err)
	}
	return out
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

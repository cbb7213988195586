package storage_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/mem"
)

// Counted reports each request once by kind, and only store failures as
// failed: not-found, exists, cancelled and a List callback's own error are
// answers, not failures.
func TestCounted(t *testing.T) {
	ctx := context.Background()
	m := mem.New()
	type key struct {
		op     storage.Op
		failed bool
	}
	got := map[key]int{}
	b := storage.Counted(m, func(op storage.Op, failed bool) { got[key{op, failed}]++ })

	b.Put(ctx, "a", strings.NewReader("1"), storage.PutOptions{})
	b.Put(ctx, "a", strings.NewReader("2"), storage.PutOptions{IfAbsent: true}) // exists
	b.Stat(ctx, "missing")                                                      // not found
	if rc, err := b.Get(ctx, "a"); err == nil {
		io.Copy(io.Discard, rc)
		rc.Close()
	}
	b.GetRange(ctx, "a", 0, 1)
	stop := errors.New("enough")
	b.List(ctx, "", func(storage.ObjectInfo) error { return stop })
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	m.FailGet = func(string) error { return context.Canceled }
	b.Get(cancelled, "a")
	m.FailGet = func(string) error { return errors.New("injected: disk on fire") }
	b.Get(ctx, "a")
	b.Delete(ctx, "a")

	want := map[key]int{
		{storage.OpPut, false}: 2, {storage.OpStat, false}: 1, {storage.OpGet, false}: 3,
		{storage.OpGet, true}: 1, {storage.OpList, false}: 1, {storage.OpDelete, false}: 1,
	}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("%s failed=%v: %d, want %d (all: %v)", k.op, k.failed, got[k], n, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("counted %v, want %v", got, want)
	}
}

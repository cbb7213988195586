package repo

import (
	"context"
	"errors"
	"testing"

	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/fs"
)

// prober is a backend whose create-if-absent must be probed.
type prober struct {
	storage.Backend
	err    error
	probed int
}

func (p *prober) ProbeConditionalPut(context.Context) error { p.probed++; return p.err }

// TestInitProbesConditionalPut: Init asks a backend that can be probed
// before it writes anything, and a failed probe leaves no repository.
func TestInitProbesConditionalPut(t *testing.T) {
	ctx := context.Background()
	for _, probeErr := range []error{nil, errors.New("the store ignored If-None-Match: *")} {
		b, err := fs.Create(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		p := &prober{Backend: b, err: probeErr}
		_, err = Init(ctx, p, InitOptions{CompressionLevel: 1})
		if p.probed != 1 {
			t.Fatalf("probed %d times, want once", p.probed)
		}
		if !errors.Is(err, probeErr) {
			t.Fatalf("Init with probe result %v: %v", probeErr, err)
		}
		_, rerr := ReadConfig(ctx, b)
		if probeErr == nil && rerr != nil {
			t.Fatalf("after a passed probe: %v", rerr)
		}
		if probeErr != nil && !errors.Is(rerr, ErrNotInitialized) {
			t.Fatalf("a failed probe left a repository: %v", rerr)
		}
	}
}

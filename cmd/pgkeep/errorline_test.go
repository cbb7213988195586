package main

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

func TestErrorLineNamesTheSignal(t *testing.T) {
	sig := errors.New("terminated signal received")
	stopped, cancel := context.WithCancelCause(context.Background())
	cancel(sig)
	cut := fmt.Errorf("backup: write manifest: put backups/x/manifest: %w", context.Canceled)
	for _, c := range []struct {
		name string
		ctx  context.Context
		err  error
		want string
	}{
		{"not stopped", context.Background(), errors.New("a\nb"), "a; b"},
		{"cut short by the signal", stopped, cut, "terminated signal received: backup: write manifest: put backups/x/manifest: context canceled"},
		{"already the cause", stopped, fmt.Errorf("backup: %w", sig), "backup: terminated signal received"},
	} {
		if got := errorLine(c.ctx, c.err); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}

package fs

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/pgkeep/pgkeep/storage"
)

func init() {
	storage.Register("file", open)
	storage.RegisterURLCheck("file", "file:///path", func(u *url.URL) error { _, err := ParseConfig(u); return err })
}

// Config is what a file:// URL configures: the repository directory.
type Config struct {
	Path string // absolute
}

// ParseConfig reads a file:///absolute/path URL.
func ParseConfig(u *url.URL) (Config, error) {
	if (u.Host != "" && u.Host != "localhost") || u.Path == "" || !strings.HasPrefix(u.Path, "/") {
		return Config{}, fmt.Errorf("repository %q: file URLs take an absolute path (file:///var/lib/pgkeep/repo)", u.Redacted())
	}
	return Config{Path: u.Path}, nil
}

// open is the registered opener: with o.Create a missing directory is
// made (repo init); otherwise it is an error wrapping storage.ErrNotFound.
func open(_ context.Context, u *url.URL, o storage.Options) (storage.Backend, error) {
	c, err := ParseConfig(u)
	if err != nil {
		return nil, err
	}
	if o.Create {
		return Create(c.Path)
	}
	b, err := New(c.Path)
	if err != nil {
		return nil, fmt.Errorf("repository %s: %w", u, err)
	}
	return b, nil
}

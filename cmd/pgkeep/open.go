package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"filippo.io/age"

	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/fs"
	"github.com/pgkeep/pgkeep/storage/s3"
)

// openBackend turns the repository URL into a storage backend. With create,
// a missing local directory is created (repo init); otherwise it is an error.
func openBackend(ctx context.Context, cfg Config, create bool) (storage.Backend, error) {
	b, err := openRawBackend(ctx, cfg, create)
	if err != nil {
		return nil, err
	}
	return storage.RateLimited(b, cfg.Storage.RateLimitBytes()), nil
}

// openRawBackend is openBackend without storage.rate_limit.
func openRawBackend(ctx context.Context, cfg Config, create bool) (storage.Backend, error) {
	u, err := url.Parse(cfg.Repository)
	if err != nil {
		return nil, fmt.Errorf("repository %q: %w", cfg.Repository, err)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("repository %q: file URLs take an absolute path (file:///var/lib/pgkeep/repo)", cfg.Repository)
		}
		if u.Path == "" || !strings.HasPrefix(u.Path, "/") {
			return nil, fmt.Errorf("repository %q: file URLs take an absolute path (file:///var/lib/pgkeep/repo)", cfg.Repository)
		}
		if create {
			return fs.Create(u.Path)
		}
		b, err := fs.New(u.Path)
		if errors.Is(err, storage.ErrNotFound) {
			return nil, fmt.Errorf("repository %s: %s is missing or not a directory (create it with `pgkeep repo init`; %s)", cfg.Repository, u.Path, cfg.sourceHint())
		}
		if err != nil {
			return nil, fmt.Errorf("repository %s: %w", cfg.Repository, err)
		}
		return b, nil
	case "s3":
		if u.Host == "" {
			return nil, fmt.Errorf("repository %q: s3 URLs name a bucket (s3://bucket/prefix)", cfg.Repository)
		}
		if u.User != nil {
			return nil, fmt.Errorf("repository URL must not contain credentials; use the AWS environment or shared credentials file")
		}
		return s3.New(ctx, s3.Options{
			Bucket:      u.Host,
			Prefix:      strings.Trim(u.Path, "/"),
			Endpoint:    cfg.S3.Endpoint,
			Region:      cfg.S3.Region,
			PathStyle:   cfg.S3.PathStyle,
			Timeout:     cfg.S3.Timeout,
			MaxAttempts: cfg.S3.MaxAttempts,
			PartSize:    int64(cfg.S3.PartSizeMB) << 20,
			Concurrency: cfg.UploadConcurrency,
		})
	}
	return nil, fmt.Errorf("repository %q: unsupported scheme %q (file or s3)", cfg.Repository, u.Scheme)
}

// loadKeys reads the key material the config names. Parse errors never
// include file content: it is secret.
func loadKeys(cfg Config) (repo.Keys, error) {
	var k repo.Keys
	for i, s := range cfg.Encryption.Recipients {
		r, err := age.ParseX25519Recipient(strings.TrimSpace(s))
		if err != nil {
			return k, &configError{fmt.Sprintf("encryption.recipients[%d]: not an age X25519 public key (age1…)", i)}
		}
		k.Recipients = append(k.Recipients, r)
	}
	if p := cfg.Encryption.IdentityFile; p != "" {
		data, err := os.ReadFile(p)
		if err != nil {
			return k, fmt.Errorf("encryption.identity_file: %w", err)
		}
		ids, err := age.ParseIdentities(bytes.NewReader(data))
		if err != nil {
			return k, &configError{fmt.Sprintf("encryption.identity_file %s: not a valid age identity file", p)}
		}
		k.Identities = ids
	}
	if p := cfg.Encryption.PassphraseFile; p != "" {
		data, err := os.ReadFile(p)
		if err != nil {
			return k, fmt.Errorf("encryption.passphrase_file: %w", err)
		}
		pass := bytes.TrimRight(data, "\r\n")
		if len(pass) == 0 {
			return k, &configError{fmt.Sprintf("encryption.passphrase_file %s is empty", p)}
		}
		k.Passphrase = pass
	}
	return k, nil
}

// openRepo opens the configured repository with this host's keys, to
// write base backups (compression.level).
func openRepo(ctx context.Context, cfg Config) (*repo.Repository, error) {
	return openRepoLevel(ctx, cfg, cfg.Compression.Level)
}

// openWALRepo opens the repository to write WAL (wal.compression_level).
func openWALRepo(ctx context.Context, cfg Config) (*repo.Repository, error) {
	return openRepoLevel(ctx, cfg, cfg.WAL.CompressionLevel)
}

func openRepoLevel(ctx context.Context, cfg Config, level int) (*repo.Repository, error) {
	return openRepoWrapped(ctx, cfg, level, nil)
}

// openRepoWrapped is openRepoLevel with the backend wrapped by wrap (nil:
// as is), e.g. to tell storage errors from the rest.
func openRepoWrapped(ctx context.Context, cfg Config, level int, wrap func(storage.Backend) storage.Backend) (*repo.Repository, error) {
	b, err := openBackend(ctx, cfg, false)
	if err != nil {
		return nil, err
	}
	if wrap != nil {
		b = wrap(b)
	}
	keys, err := loadKeys(cfg)
	if err != nil {
		return nil, err
	}
	r, err := repo.Open(ctx, b, repo.OpenOptions{
		Keys:             keys,
		CompressionLevel: level,
	})
	if errors.Is(err, repo.ErrNotInitialized) {
		return nil, fmt.Errorf("%w (%s)", err, cfg.sourceHint())
	}
	return r, err
}

// sourceHint says which settings were used: the usual reason for "no
// repository here" is a hook that did not get the config the shell has.
func (c Config) sourceHint() string {
	if c.source == "" {
		return "settings given by the caller"
	}
	return c.source
}

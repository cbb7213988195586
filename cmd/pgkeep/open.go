package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"

	"filippo.io/age"

	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/storage"
	// The storage backends a repository URL can name; each registers its
	// scheme with storage. A new backend is one package and one line here.
	_ "github.com/pgkeep/pgkeep/storage/fs"
	_ "github.com/pgkeep/pgkeep/storage/s3"
)

// openBackend turns the repository URL into a storage backend through the
// storage registry (each backend package registers its scheme; the blank
// imports above link them in). With create, a missing local directory is
// created (repo init); otherwise it is an error.
func openBackend(ctx context.Context, cfg Config, create bool) (storage.Backend, error) {
	b, err := storage.Open(ctx, cfg.Repository, storage.Options{
		Create:    create,
		Params:    backendParams(cfg),
		RateLimit: cfg.Storage.RateLimitBytes(),
	})
	if errors.Is(err, storage.ErrNotFound) {
		// Only a local directory can be missing before anything is read.
		if u, perr := url.Parse(cfg.Repository); perr == nil {
			return nil, fmt.Errorf("repository %s: %s is missing or not a directory (create it with `pgkeep repo init`; %s)", cfg.Repository, u.Path, cfg.sourceHint())
		}
	}
	return b, err
}

// backendParams passes the backend sections of the config to the backend
// the URL names; each reads its own keys (storage.Options.Params).
func backendParams(cfg Config) map[string]string {
	p := map[string]string{
		"endpoint":           cfg.S3.Endpoint,
		"region":             cfg.S3.Region,
		"path_style":         strconv.FormatBool(cfg.S3.PathStyle),
		"max_attempts":       strconv.Itoa(cfg.S3.MaxAttempts),
		"part_size_mb":       strconv.Itoa(cfg.S3.PartSizeMB),
		"upload_concurrency": strconv.Itoa(cfg.UploadConcurrency),
	}
	if cfg.S3.Timeout != 0 {
		p["timeout"] = cfg.S3.Timeout.String()
	}
	return p
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

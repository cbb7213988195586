package repo

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/pgkeep/pgkeep/storage"
)

// VerifyCache remembers WAL objects verify has read in full and found
// good, so the next verify reads only what is new or changed. WAL objects
// are created once and never replaced, so an object whose listing (size,
// modification time, ETag where the store has one) and plaintext header
// are unchanged holds the bytes that were checked. Corruption that keeps
// all of these (bit rot in place) is found only by a verify without the
// cache.
//
// The cache is one file per repository, named after and recording the
// repository it belongs to (its location and its config's creation time,
// so a re-initialized repository at the same place starts empty). A file
// for another repository, or one that cannot be parsed, is ignored.
type VerifyCache struct {
	path string
	repo cacheRepo

	mu      sync.Mutex
	entries map[string]cacheEntry
	seen    map[string]bool
}

type cacheRepo struct {
	Location string    `json:"location"`
	Created  time.Time `json:"created"`
}

type cacheFile struct {
	Version    int                   `json:"version"`
	Repository cacheRepo             `json:"repository"`
	Objects    map[string]cacheEntry `json:"objects"`
}

// cacheEntry is what was true of an object when it was read in full.
type cacheEntry struct {
	Size    int64  `json:"size"`
	ModTime int64  `json:"mtime"` // Unix nanoseconds
	ETag    string `json:"etag,omitempty"`
	// Header is the object's plaintext header (hex): it names the content's
	// size and SHA-256, so a replaced object with the same listing is
	// still told apart.
	Header string `json:"header,omitempty"`
	// Facts checked again on every verify, against the repository's
	// system and segment size.
	SystemIdentifier uint64    `json:"system_identifier,omitempty"`
	SegmentSize      int64     `json:"segment_size,omitempty"`
	Verified         time.Time `json:"verified"`
}

const cacheVersion = 1

// OpenVerifyCache opens the cache for repository r in dir (created 0700 if
// missing). A missing, unreadable or foreign cache file starts empty.
func OpenVerifyCache(dir string, r *Repository) (*VerifyCache, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("verify cache directory %q is not an absolute path", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("verify cache: %w", err)
	}
	id := cacheRepo{Location: r.backend.String(), Created: r.Config.Created.UTC()}
	key := sha256.Sum256([]byte(id.Location + "\n" + id.Created.Format(time.RFC3339Nano)))
	c := &VerifyCache{
		path:    filepath.Join(dir, "verify-"+hex.EncodeToString(key[:8])+".json"),
		repo:    id,
		entries: map[string]cacheEntry{},
		seen:    map[string]bool{},
	}
	data, err := os.ReadFile(c.path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return c, nil
		}
		return nil, fmt.Errorf("verify cache: %w", err)
	}
	var f cacheFile
	if json.Unmarshal(data, &f) == nil && f.Version == cacheVersion &&
		f.Repository.Location == id.Location && f.Repository.Created.Equal(id.Created) {
		for k, v := range f.Objects {
			c.entries[k] = v
		}
	}
	return c, nil
}

// Path is the cache file.
func (c *VerifyCache) Path() string { return c.path }

// lookup returns the entry for an object if its listing and header still
// match; header is nil when the caller relies on the store's ETag.
func (c *VerifyCache) lookup(o storage.ObjectInfo, header []byte) (cacheEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seen[o.Name] = true
	e, ok := c.entries[o.Name]
	if !ok || e.Size != o.Size || e.ModTime != o.ModTime.UnixNano() || e.ETag != o.ETag {
		return cacheEntry{}, false
	}
	if header != nil && e.Header != hex.EncodeToString(header) {
		return cacheEntry{}, false
	}
	return e, true
}

func (c *VerifyCache) store(o storage.ObjectInfo, header []byte, e cacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.Size, e.ModTime, e.ETag = o.Size, o.ModTime.UnixNano(), o.ETag
	if header != nil {
		e.Header = hex.EncodeToString(header)
	}
	c.seen[o.Name] = true
	c.entries[o.Name] = e
}

// forget drops an object that was found bad, so it is read again.
func (c *VerifyCache) forget(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.entries, name)
}

// Save writes the cache (atomically, 0600), without the objects this
// verify did not see: they were removed from the repository.
func (c *VerifyCache) Save() error {
	c.mu.Lock()
	f := cacheFile{Version: cacheVersion, Repository: c.repo, Objects: map[string]cacheEntry{}}
	for k, v := range c.entries {
		if c.seen[k] {
			f.Objects[k] = v
		}
	}
	c.mu.Unlock()
	data, err := json.Marshal(f)
	if err != nil {
		return err
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	tmp := c.path + ".tmp-" + hex.EncodeToString(rnd[:])
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("save verify cache: %w", err)
	}
	if err := os.Rename(tmp, c.path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save verify cache: %w", err)
	}
	return nil
}

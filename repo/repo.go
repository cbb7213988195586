// Package repo owns the repository: its layout, its config object, and the
// codec every object goes through. It sits on top of a storage.Backend and
// knows nothing about PostgreSQL processes or command lines.
package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"filippo.io/age"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/storage"
)

// FormatVersion is the newest repository format this code reads and
// writes (docs/format.md): 2 once a backup may reference another backup's
// packs, 3 once a manifest may hold chunks or file maps (format 3 and 4
// manifests), which pgkeeps of format 1 would misread, 4 once a repack
// moved blocks (relocations, which older readers would not follow), 5 once
// a file map may be binary (manifest format 6), 6 once a block may be
// composite (manifest format 7). Older repositories
// are read as they are and upgraded by the first backup that needs it.
const FormatVersion = 6

// ConfigObject is the name of the repository's own config object.
const ConfigObject = "config.json"

// Encryption modes recorded in the repository config.
const (
	EncryptionNone       = "none"
	EncryptionRecipients = "age-recipients" // age X25519 public keys from the pushing host's config
	EncryptionPassphrase = "age-passphrase" // a repository key wrapped with an scrypt passphrase
)

// ErrNotInitialized means the repository has no config object.
var ErrNotInitialized = errors.New("repository is not initialized (run `pgkeep repo init`)")

// ErrAlreadyInitialized means repo init found an existing config object.
var ErrAlreadyInitialized = errors.New("repository is already initialized; refusing to overwrite its config")

// Config is the repository's own config object, stored as plain JSON so any
// host can tell how the repository is encoded before it has a key.
type Config struct {
	Format           int       `json:"format"`
	Created          time.Time `json:"created"`
	Compression      string    `json:"compression"`
	CompressionLevel int       `json:"compression_level"`
	Encryption       string    `json:"encryption"`
	// Recipient and WrappedIdentity are set in passphrase mode: objects are
	// encrypted to Recipient (so pushing needs no secret) and the matching
	// identity is stored encrypted with the passphrase (scrypt).
	Recipient       string `json:"recipient,omitempty"`
	WrappedIdentity string `json:"wrapped_identity,omitempty"`
	// SystemIdentifier is the PostgreSQL cluster the repository belongs to,
	// as a decimal string (JSON numbers lose uint64 precision); empty until known.
	SystemIdentifier string `json:"system_identifier,omitempty"`
	// ID names the repository for what hosts remember about it (see
	// Repository.ID); Recipients are the age recipients objects may be
	// encrypted to (recipients mode). Both are recorded at init since
	// format 1 repositories made by pgkeep 0.x lack them.
	ID         string   `json:"id,omitempty"`
	Recipients []string `json:"recipients,omitempty"`
}

// Keys are the key material a host's configuration supplies.
type Keys struct {
	Recipients []age.Recipient
	Identities []age.Identity
	Passphrase []byte
}

// InitOptions are the choices `repo init` records.
type InitOptions struct {
	CompressionLevel int
	Keys             Keys
	SystemIdentifier uint64 // 0 when not known yet
	Now              time.Time
}

// Init writes a new repository's config object; it never overwrites one.
// A backend whose create-if-absent rests on the server
// (storage.ConditionalPutProber) is probed first: the promise that archived
// WAL and manifests are never overwritten depends on it, so a store that
// ignores it gets no repository.
func Init(ctx context.Context, b storage.Backend, o InitOptions) (Config, error) {
	if p, ok := b.(storage.ConditionalPutProber); ok {
		if err := p.ProbeConditionalPut(ctx); err != nil {
			return Config{}, err
		}
	}
	cfg := Config{
		// 4 only once a repack relocates blocks: until then pgkeeps of
		// format 3 read the repository.
		Format:           3,
		Created:          o.Now.UTC(),
		Compression:      "zstd",
		CompressionLevel: o.CompressionLevel,
		Encryption:       EncryptionNone,
		ID:               newRepositoryID(),
	}
	if o.CompressionLevel == 0 {
		cfg.Compression = "none"
	}
	if o.SystemIdentifier != 0 {
		cfg.SystemIdentifier = fmt.Sprint(o.SystemIdentifier)
	}
	switch {
	case len(o.Keys.Passphrase) > 0:
		id, err := age.GenerateX25519Identity()
		if err != nil {
			return cfg, err
		}
		sr, err := age.NewScryptRecipient(string(o.Keys.Passphrase))
		if err != nil {
			return cfg, fmt.Errorf("passphrase: %w", err)
		}
		var buf bytes.Buffer
		w, err := age.Encrypt(&buf, sr)
		if err != nil {
			return cfg, err
		}
		io.WriteString(w, id.String())
		if err := w.Close(); err != nil {
			return cfg, err
		}
		cfg.Encryption = EncryptionPassphrase
		cfg.Recipient = id.Recipient().String()
		cfg.WrappedIdentity = base64.StdEncoding.EncodeToString(buf.Bytes())
	case len(o.Keys.Recipients) > 0:
		cfg.Encryption = EncryptionRecipients
		cfg.Recipients = recipientStrings(o.Keys)
		if len(cfg.Recipients) != len(o.Keys.Recipients) {
			return cfg, errors.New("encryption.recipients: only age X25519 recipients can be recorded")
		}
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return cfg, err
	}
	err = b.Put(ctx, ConfigObject, bytes.NewReader(append(data, '\n')), storage.PutOptions{IfAbsent: true})
	if errors.Is(err, storage.ErrExists) {
		return cfg, fmt.Errorf("%s: %w", b, ErrAlreadyInitialized)
	}
	if err != nil {
		return cfg, fmt.Errorf("write repository config: %w", err)
	}
	return cfg, nil
}

// ReadConfig reads the repository config object.
func ReadConfig(ctx context.Context, b storage.Backend) (Config, error) {
	cfg, _, err := readConfig(ctx, b)
	return cfg, err
}

func readConfig(ctx context.Context, b storage.Backend) (Config, []byte, error) {
	var cfg Config
	rc, err := b.Get(ctx, ConfigObject)
	if errors.Is(err, storage.ErrNotFound) {
		return cfg, nil, fmt.Errorf("%s: %w", b, ErrNotInitialized)
	}
	if err != nil {
		return cfg, nil, fmt.Errorf("read repository config: %w", err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, 1<<20))
	if err != nil {
		return cfg, nil, fmt.Errorf("read repository config: %w", err)
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return cfg, nil, fmt.Errorf("repository config %s is not valid JSON: %w", ConfigObject, err)
	}
	if cfg.Format < 1 || cfg.Format > FormatVersion {
		return cfg, nil, fmt.Errorf("repository format %d is not supported by this pgkeep (supports 1..%d)", cfg.Format, FormatVersion)
	}
	return cfg, data, nil
}

// Repository is an opened repository: backend, config and codec.
type Repository struct {
	// backend is reached only through repo's purpose-named calls
	// (PutWAL, FetchWAL, CreatePack, …): nothing above repo sees storage.
	backend storage.Backend
	Config  Config
	codec   *Codec
	keys    Keys
	// encryptErr is why this host cannot write objects, if it cannot.
	encryptErr error
	// rawConfig is config.json as stored (Repository.ID of old repositories).
	rawConfig []byte
	// bindCache is where bindings read are remembered ("" = nowhere).
	bindCache string
	// historyList is the last listing of wal/history/ (historyNames).
	historyMu     sync.Mutex
	historyList   []string
	historyListed time.Time
	// writableErr is CheckWritable's answer once writableChecked.
	writableChecked bool
	writableErr     error
}

// OpenOptions are the host's settings for an opened repository.
type OpenOptions struct {
	Keys Keys
	// CompressionLevel overrides the level recorded at init (-1 = use it).
	CompressionLevel int
	Concurrency      int
}

// Open reads the config object and prepares the codec. Key problems that
// only matter for one direction (no recipient for writing, no identity for
// reading) are reported when that direction is used.
func Open(ctx context.Context, b storage.Backend, o OpenOptions) (*Repository, error) {
	cfg, raw, err := readConfig(ctx, b)
	if err != nil {
		return nil, err
	}
	r := &Repository{backend: b, Config: cfg, keys: o.Keys, rawConfig: raw}
	level := cfg.CompressionLevel
	if o.CompressionLevel >= 0 {
		level = o.CompressionLevel
	}
	r.codec = &Codec{Level: level, Identities: o.Keys.Identities, Concurrency: o.Concurrency}
	switch cfg.Encryption {
	case EncryptionNone:
		if len(o.Keys.Recipients) > 0 || len(o.Keys.Passphrase) > 0 {
			r.encryptErr = errors.New("encryption is configured but the repository was initialized without encryption; refusing to mix")
		}
	case EncryptionRecipients:
		if len(o.Keys.Recipients) == 0 {
			r.encryptErr = errors.New("repository is encrypted: set encryption.recipients to push to it")
		}
		r.codec.Recipients = o.Keys.Recipients
	case EncryptionPassphrase:
		rcp, err := age.ParseX25519Recipient(cfg.Recipient)
		if err != nil {
			return nil, fmt.Errorf("repository config: bad recipient: %w", err)
		}
		r.codec.Recipients = []age.Recipient{rcp}
		if len(o.Keys.Passphrase) > 0 {
			id, err := unwrapIdentity(cfg.WrappedIdentity, o.Keys.Passphrase)
			if err != nil {
				return nil, err
			}
			r.codec.Identities = append(r.codec.Identities, id)
		}
	default:
		return nil, fmt.Errorf("repository config: unknown encryption %q", cfg.Encryption)
	}
	return r, nil
}

func unwrapIdentity(wrapped string, passphrase []byte) (age.Identity, error) {
	raw, err := base64.StdEncoding.DecodeString(wrapped)
	if err != nil {
		return nil, fmt.Errorf("repository config: bad wrapped identity: %w", err)
	}
	si, err := age.NewScryptIdentity(string(passphrase))
	if err != nil {
		return nil, err
	}
	rd, err := age.Decrypt(bytes.NewReader(raw), si)
	if err != nil {
		return nil, errors.New("wrong passphrase: it does not unlock the repository key")
	}
	data, err := io.ReadAll(rd)
	if err != nil {
		return nil, fmt.Errorf("unwrap repository key: %w", err)
	}
	id, err := age.ParseX25519Identity(strings.TrimSpace(string(data)))
	if err != nil {
		return nil, fmt.Errorf("unwrap repository key: %w", err)
	}
	return id, nil
}

// PutObject encodes plain content and stores it under name. With IfAbsent a
// name that is already taken gives storage.ErrExists and nothing changes.
func (r *Repository) PutObject(ctx context.Context, name string, plain []byte, opts storage.PutOptions) error {
	return r.PutBytes(ctx, name, plain, sha256.Sum256(plain), opts)
}

// PutBytes is PutObject for a caller that already has the content's
// SHA-256 (wal-push hashes each segment once). The object is encoded in
// memory, using every core for large content, before the upload starts.
func (r *Repository) PutBytes(ctx context.Context, name string, plain []byte, sum [32]byte, opts storage.PutOptions) error {
	if err := r.CheckWritable(ctx); err != nil {
		return err
	}
	pieces, err := r.codec.encodePieces(plain, sum, r.codec.concurrency())
	if err != nil {
		return fmt.Errorf("encode %s: %w", name, err)
	}
	readers := make([]io.Reader, len(pieces))
	for i, p := range pieces {
		readers[i] = bytes.NewReader(p)
	}
	return r.backend.Put(ctx, name, io.MultiReader(readers...), opts)
}

// PutStream is PutObject for content the caller streams; size and sum must
// describe it exactly (see Codec.Encode).
func (r *Repository) PutStream(ctx context.Context, name string, src io.Reader, size int64, sum [32]byte, opts storage.PutOptions) error {
	if err := r.CheckWritable(ctx); err != nil {
		return err
	}
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := r.codec.Encode(pw, src, size, sum)
		pw.CloseWithError(err)
		done <- err
	}()
	err := r.backend.Put(ctx, name, pr, opts)
	pr.CloseWithError(errors.New("upload ended"))
	encErr := <-done
	if err != nil {
		return err
	}
	return encErr
}

// PutReader stores exactly size bytes read from src under name and returns
// their SHA-256; reading, hashing and compressing overlap (wal-push). A
// regular *os.File is mapped rather than read, from its start (callers pass
// a freshly opened file).
func (r *Repository) PutReader(ctx context.Context, name string, src io.Reader, size int64, opts storage.PutOptions) ([32]byte, error) {
	if err := r.CheckWritable(ctx); err != nil {
		return [32]byte{}, err
	}
	if f, ok := src.(*os.File); ok && r.codec.Level > 0 && size > 0 && size <= 1<<30 {
		// A file that cannot be mapped (not a regular file, a filesystem
		// without mmap) is read instead.
		sum, err := r.putFile(name, f, size, func(body io.Reader) error {
			return r.backend.Put(ctx, name, body, opts)
		})
		if !errors.Is(err, errNotMapped) {
			return sum, err
		}
	}
	pieces, sum, err := r.codec.encodeFrom(src, size)
	if err != nil {
		return sum, fmt.Errorf("read %s: %w", name, err)
	}
	readers := make([]io.Reader, len(pieces))
	for i, p := range pieces {
		readers[i] = bytes.NewReader(p)
	}
	return sum, r.backend.Put(ctx, name, io.MultiReader(readers...), opts)
}

// Header reads only the plaintext header of an object.
func (r *Repository) Header(ctx context.Context, name string) (Header, error) {
	rc, err := r.backend.GetRange(ctx, name, 0, headerSize)
	if err != nil {
		return Header{}, err
	}
	defer rc.Close()
	h, err := ReadHeader(rc)
	if err != nil {
		return h, fmt.Errorf("%s: %w", name, err)
	}
	return h, nil
}

// GetObject decodes an object into dst, verifying its checksum.
func (r *Repository) GetObject(ctx context.Context, name string, dst io.Writer) (Header, error) {
	rc, err := r.backend.Get(ctx, name)
	if err != nil {
		return Header{}, err
	}
	defer rc.Close()
	return r.codec.Decode(dst, rc)
}

// WALObjectName is where an archived WAL file lives: segments, .partial and
// .backup files under their 16-hex-digit timeline+log directory so one
// listing finds a timeline's range, history files together.
func WALObjectName(f pg.WALFile) string {
	if f.Kind == pg.KindHistory {
		return "wal/history/" + f.Name
	}
	return "wal/" + f.Name[:16] + "/" + f.Name
}

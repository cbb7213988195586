package repo

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/pgkeep/pgkeep/internal/fsync"
	"github.com/pgkeep/pgkeep/storage"
)

// A repository belongs to one PostgreSQL system and accepts objects
// encrypted to one set of recipients. repo init records what it knows in
// config.json; what it did not know is bound by the first writer that
// knows it, with a create-if-absent object under bind/ that is never
// changed afterwards (docs/format.md, "Bindings"):
//
//	bind/system-identifier   decimal system identifier
//	bind/recipients          sorted age recipients, one a line
//
// Bindings never change, so a host may remember one it has read (wal-push
// does, in pg_wal/pgkeep/), as long as the note names the repository ID.
const (
	bindSystemObject     = "bind/system-identifier"
	bindRecipientsObject = "bind/recipients"
)

// newRepositoryID makes the random ID repo init records.
func newRepositoryID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ID names this repository for anything a host remembers about it
// (push-ahead records, binding notes). Repositories initialised before
// IDs were recorded get one derived from their config object's bytes,
// which differ for every `repo init` (the creation time is in them).
func (r *Repository) ID() string {
	if r.Config.ID != "" {
		return r.Config.ID
	}
	sum := sha256.Sum256(r.rawConfig)
	return "cfg-" + hex.EncodeToString(sum[:12])
}

// SetBindingCache lets the repository remember bindings it has read in
// dir (a host-local directory only this host's pgkeep writes), so a
// wal-push reads bind/ objects once rather than on every call.
func (r *Repository) SetBindingCache(dir string) { r.bindCache = dir }

// ErrForeignSystem means a segment or cluster belongs to another PostgreSQL
// system than the one the repository is bound to.
var ErrForeignSystem = errors.New("refusing to mix clusters in one repository")

// BindSystem makes sure the repository belongs to system sysid, binding it
// if no system is recorded yet. Concurrent first writers of different
// systems: exactly one binding wins, the others are refused.
func (r *Repository) BindSystem(ctx context.Context, sysid uint64) error {
	if sysid == 0 {
		return errors.New("system identifier unknown")
	}
	want := strconv.FormatUint(sysid, 10)
	bound := r.Config.SystemIdentifier
	if bound == "" {
		var err error
		bound, err = r.bind(ctx, bindSystemObject, want)
		if err != nil {
			return fmt.Errorf("bind repository to system %s: %w", want, err)
		}
	}
	if bound != want {
		return fmt.Errorf("repository belongs to database system %s but this is %s: %w", bound, want, ErrForeignSystem)
	}
	return nil
}

// BoundSystem returns the system identifier the repository is bound to,
// "" when none is yet.
func (r *Repository) BoundSystem(ctx context.Context) (string, error) {
	if r.Config.SystemIdentifier != "" {
		return r.Config.SystemIdentifier, nil
	}
	v, err := r.readBinding(ctx, bindSystemObject)
	if errors.Is(err, storage.ErrNotFound) {
		return "", nil
	}
	return v, err
}

// checkRecipients makes sure this host encrypts to recipients the
// repository accepts: those config.json records, or for repositories
// initialised before they were recorded, those the first writer bound.
func (r *Repository) checkRecipients(ctx context.Context) error {
	if r.Config.Encryption != EncryptionRecipients {
		return nil
	}
	mine := recipientStrings(r.keys)
	accepted := r.Config.Recipients
	if len(accepted) == 0 {
		bound, err := r.bind(ctx, bindRecipientsObject, strings.Join(mine, "\n"))
		if err != nil {
			return fmt.Errorf("bind repository recipients: %w", err)
		}
		accepted = strings.Split(bound, "\n")
	}
	for _, m := range mine {
		if !slices.Contains(accepted, m) {
			return fmt.Errorf("encryption.recipients has %s…, which this repository does not accept (it records %d recipient(s)): %w",
				m[:min(len(m), 12)], len(accepted), ErrRecipientNotAccepted)
		}
	}
	return nil
}

// CheckWritable reports why this host cannot write to the repository, if
// it cannot: keys that do not fit its encryption, or recipients it does
// not accept. The answer is computed once per opened repository.
func (r *Repository) CheckWritable(ctx context.Context) error {
	if r.encryptErr != nil {
		return r.encryptErr
	}
	if !r.writableChecked {
		r.writableErr = r.checkRecipients(ctx)
		r.writableChecked = r.writableErr == nil || !isTransient(r.writableErr)
	}
	return r.writableErr
}

// ErrRecipientNotAccepted means this host would encrypt to a key the
// repository does not record: its restore hosts could not read the object.
var ErrRecipientNotAccepted = errors.New("refusing to store objects the repository's restore hosts could not decrypt")

func isTransient(err error) bool { return !errors.Is(err, ErrRecipientNotAccepted) }

func recipientStrings(k Keys) []string {
	var out []string
	for _, rc := range k.Recipients {
		if s, ok := rc.(fmt.Stringer); ok {
			out = append(out, s.String())
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// bind returns the value bound under object, creating it with want if
// nothing is bound yet.
func (r *Repository) bind(ctx context.Context, object, want string) (string, error) {
	v, err := r.readBinding(ctx, object)
	if err == nil {
		return v, nil
	}
	if !errors.Is(err, storage.ErrNotFound) {
		return "", err
	}
	err = r.backend.Put(ctx, object, strings.NewReader(want+"\n"), storage.PutOptions{IfAbsent: true})
	if err != nil && !errors.Is(err, storage.ErrExists) {
		return "", err
	}
	// Read back whoever won a concurrent first write.
	return r.readBinding(ctx, object)
}

// readBinding reads a bind/ object, through the host's note if it has one.
func (r *Repository) readBinding(ctx context.Context, object string) (string, error) {
	note := ""
	if r.bindCache != "" {
		note = filepath.Join(r.bindCache, "bind-"+r.ID()+"-"+filepath.Base(object))
		if data, err := os.ReadFile(note); err == nil && len(data) > 0 {
			return strings.TrimSpace(string(data)), nil
		}
	}
	rc, err := r.backend.Get(ctx, object)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, 1<<16))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", object, err)
	}
	v := strings.TrimSpace(string(data))
	if v == "" {
		return "", fmt.Errorf("%s is empty: %w", object, ErrCorrupt)
	}
	if note != "" {
		writeNote(note, []byte(v+"\n"))
	}
	return v, nil
}

// writeNote writes a host-local note atomically; losing one only costs a
// read of the repository next time.
func writeNote(path string, data []byte) {
	if os.MkdirAll(filepath.Dir(path), 0o700) != nil {
		return
	}
	tmp := path + ".tmp"
	if os.WriteFile(tmp, data, 0o600) == nil && os.Rename(tmp, path) == nil {
		fsync.Dir(filepath.Dir(path))
	}
}

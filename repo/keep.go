package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/pgkeep/pgkeep/storage"
)

// A kept backup survives retention, and so does the WAL from its start on.
// The flag is backups/<id>/keep.json (plain JSON, rewritten with a plain
// overwrite), not part of backup.json, which never changes once written.
func keepName(id string) string { return BackupPrefix(id) + "keep.json" }

// KeepRecord is backups/<id>/keep.json.
type KeepRecord struct {
	// Time is when the backup was marked kept.
	Time time.Time `json:"time"`
	// Until, when set, ends the keep: from then on retention treats the
	// backup like any other. Absent: kept until unkept.
	Until *time.Time `json:"until,omitempty"`
}

// Active reports whether the record still keeps its backup at now.
func (k KeepRecord) Active(now time.Time) bool { return k.Until == nil || now.Before(*k.Until) }

// KeepBackup marks committed backup id kept (until, when not nil). Marking
// it again replaces the record.
func (r *Repository) KeepBackup(ctx context.Context, id string, until *time.Time, now time.Time) error {
	if _, err := r.ReadSummary(ctx, id); err != nil {
		return err
	}
	if until != nil && !until.After(now) {
		return fmt.Errorf("keep backup %s: --until %s is not in the future", id, until.UTC().Format(time.RFC3339))
	}
	rec := KeepRecord{Time: now.UTC()}
	if until != nil {
		u := until.UTC()
		rec.Until = &u
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := r.backend.Put(ctx, keepName(id), bytes.NewReader(data), storage.PutOptions{}); err != nil {
		return fmt.Errorf("keep backup %s: %w", id, err)
	}
	return nil
}

// UnkeepBackup removes backup id's keep flag (a backup that was not kept
// is left as it is).
func (r *Repository) UnkeepBackup(ctx context.Context, id string) error {
	if _, err := r.ReadSummary(ctx, id); err != nil {
		return err
	}
	if err := r.backend.Delete(ctx, keepName(id)); err != nil {
		return fmt.Errorf("unkeep backup %s: %w", id, err)
	}
	return nil
}

// readKeep reads backup id's keep record; ok is false when it has none.
func (r *Repository) readKeep(ctx context.Context, id string) (KeepRecord, bool, error) {
	var rec KeepRecord
	rc, err := r.backend.Get(ctx, keepName(id))
	if errors.Is(err, storage.ErrNotFound) {
		return rec, false, nil
	}
	if err != nil {
		return rec, false, fmt.Errorf("backup %s: keep flag: %w", id, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, 1<<16))
	if err != nil {
		return rec, false, fmt.Errorf("backup %s: keep flag: %w", id, err)
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		// A damaged flag still says "keep": the safe reading.
		return KeepRecord{}, true, nil
	}
	return rec, true, nil
}

// KeptBackups returns the keep records of the committed backups that have
// one (expired ones included; see KeepRecord.Active).
func (r *Repository) KeptBackups(ctx context.Context) (map[string]KeepRecord, error) {
	l, err := r.listBackupObjects(ctx)
	if err != nil {
		return nil, err
	}
	return r.readKeeps(ctx, l)
}

func (r *Repository) readKeeps(ctx context.Context, l backupListing) (map[string]KeepRecord, error) {
	out := map[string]KeepRecord{}
	for _, id := range l.committed {
		if !l.keep[id] {
			continue
		}
		rec, ok, err := r.readKeep(ctx, id)
		if err != nil {
			return nil, err
		}
		if ok {
			out[id] = rec
		}
	}
	return out, nil
}

// Bounds of a backup's annotations: they live in its summary, which every
// list reads.
const (
	MaxAnnotations        = 16
	MaxAnnotationValueLen = 256
)

var annotationKeyRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.-]{0,62}$`)

// ParseAnnotations turns key=value words (--annotation) into annotations.
func ParseAnnotations(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("--annotation %.80q: use key=value", kv)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("--annotation %.80q: key given twice", k)
		}
		out[k] = v
	}
	return out, ValidateAnnotations(out)
}

// ValidateAnnotations bounds a backup's annotations: at most
// MaxAnnotations, keys of a letter then up to 62 letters, digits, '_',
// '.' or '-', values of at most MaxAnnotationValueLen bytes of printable
// UTF-8.
func ValidateAnnotations(a map[string]string) error {
	if len(a) > MaxAnnotations {
		return fmt.Errorf("%d annotations: at most %d", len(a), MaxAnnotations)
	}
	keys := make([]string, 0, len(a))
	for k := range a {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := a[k]
		if !annotationKeyRE.MatchString(k) {
			return fmt.Errorf("annotation key %.80q: a letter, then up to 62 letters, digits, '_', '.' or '-'", k)
		}
		if len(v) > MaxAnnotationValueLen {
			return fmt.Errorf("annotation %s: value of %d bytes (at most %d)", k, len(v), MaxAnnotationValueLen)
		}
		if !utf8.ValidString(v) || strings.IndexFunc(v, func(c rune) bool { return !unicode.IsPrint(c) }) >= 0 {
			return fmt.Errorf("annotation %s: the value must be printable UTF-8 (no control characters)", k)
		}
	}
	return nil
}

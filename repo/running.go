package repo

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/pgkeep/pgkeep/storage"
)

// A running backup is known by its heartbeat, not guessed from the age of
// its objects (it writes nothing while it waits for WAL): the backup
// rewrites backups/<id>/alive every HeartbeatInterval, and delete treats an
// uncommitted backup whose heartbeat is younger than RunningGrace (by the
// store's own clock) as running, whatever --debris-min-age says. A backup
// that could not renew its heartbeat for RunningGrace/2 does not commit,
// and one whose packs are not all there at commit does not either: a
// delete that removed them cannot produce a backup restore would trust.
const (
	HeartbeatInterval = 5 * time.Second
	RunningGrace      = 4 * HeartbeatInterval
)

func aliveName(id string) string  { return BackupPrefix(id) + "alive" }
func failedName(id string) string { return BackupPrefix(id) + "failed" }

// MarkBackupFailed records that backup id stopped without committing and
// will never commit, so a delete need not wait for its heartbeat to age.
// Only the backup itself writes it, after its heartbeat stopped.
func (r *Repository) MarkBackupFailed(ctx context.Context, id string, cause error) error {
	host, _ := os.Hostname()
	data, _ := json.Marshal(map[string]any{"host": host, "time": time.Now().UTC(), "error": cause.Error()})
	return r.backend.Put(ctx, failedName(id), bytes.NewReader(data), storage.PutOptions{})
}

// Heartbeat keeps a running backup visible as running.
type Heartbeat struct {
	r      *Repository
	id     string
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	lastOK   time.Time
	err      error
	started  time.Time
	progress func() (done, total int64)
}

// AliveRecord is backups/<id>/alive: who runs the backup and how far it
// got (the bytes of the data directory read so far, of how many).
type AliveRecord struct {
	Host       string    `json:"host"`
	PID        int       `json:"pid"`
	Time       time.Time `json:"time"`
	Started    time.Time `json:"started,omitzero"`
	BytesDone  int64     `json:"bytes_done,omitempty"`
	BytesTotal int64     `json:"bytes_total,omitempty"`
}

// SetProgress makes every later heartbeat carry the backup's progress as
// fn reports it (fn is called from the heartbeat's goroutine).
func (h *Heartbeat) SetProgress(fn func() (done, total int64)) {
	h.mu.Lock()
	h.progress = fn
	h.mu.Unlock()
}

// StartHeartbeat writes backup id's heartbeat now and then every
// HeartbeatInterval until Stop.
func (r *Repository) StartHeartbeat(ctx context.Context, id string) (*Heartbeat, error) {
	h := &Heartbeat{r: r, id: id, done: make(chan struct{}), started: time.Now().UTC()}
	if err := h.beat(ctx); err != nil {
		return nil, fmt.Errorf("write heartbeat: %w", err)
	}
	ctx, h.cancel = context.WithCancel(ctx)
	go func() {
		defer close(h.done)
		t := time.NewTicker(HeartbeatInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				bctx, cancel := context.WithTimeout(ctx, HeartbeatInterval)
				err := h.beat(bctx)
				cancel()
				if err != nil && ctx.Err() == nil {
					h.mu.Lock()
					h.err = err
					h.mu.Unlock()
				}
			}
		}
	}()
	return h, nil
}

func (h *Heartbeat) beat(ctx context.Context) error {
	host, _ := os.Hostname()
	rec := AliveRecord{Host: host, PID: os.Getpid(), Time: time.Now().UTC(), Started: h.started}
	h.mu.Lock()
	fn := h.progress
	h.mu.Unlock()
	if fn != nil {
		rec.BytesDone, rec.BytesTotal = fn()
	}
	data, _ := json.Marshal(rec)
	if err := h.r.backend.Put(ctx, aliveName(h.id), bytes.NewReader(data), storage.PutOptions{}); err != nil {
		return err
	}
	h.mu.Lock()
	h.lastOK = time.Now()
	h.mu.Unlock()
	return nil
}

// Stop ends the heartbeat.
func (h *Heartbeat) Stop() {
	h.cancel()
	<-h.done
}

// Healthy reports whether the heartbeat was renewed recently enough that
// no delete can have taken the backup for abandoned.
func (h *Heartbeat) Healthy() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if since := time.Since(h.lastOK); since > RunningGrace/2 {
		msg := fmt.Sprintf("backup %s could not renew its heartbeat for %s (a concurrent delete may take it for abandoned)", h.id, since.Round(time.Second))
		if h.err != nil {
			return fmt.Errorf("%s: %w", msg, h.err)
		}
		return errors.New(msg)
	}
	return nil
}

// storeNow is the store's current time: the modification time it gives a
// fresh object. Comparing heartbeats with it keeps a fast clock on the
// deleting host from taking a running backup for abandoned.
func (r *Repository) storeNow(ctx context.Context) (time.Time, error) {
	var b [8]byte
	rand.Read(b[:])
	name := "locks/clock-" + hex.EncodeToString(b[:])
	if err := r.backend.Put(ctx, name, strings.NewReader("clock probe\n"), storage.PutOptions{IfAbsent: true}); err != nil {
		return time.Time{}, fmt.Errorf("probe the store's clock: %w", err)
	}
	defer r.backend.Delete(context.WithoutCancel(ctx), name)
	info, err := r.backend.Stat(ctx, name)
	if err != nil {
		return time.Time{}, fmt.Errorf("probe the store's clock: %w", err)
	}
	return info.ModTime, nil
}

// lastSign is when an uncommitted backup last showed it was alive: its
// heartbeat, or for backups made before heartbeats, its newest object.
func (r *Repository) lastSign(ctx context.Context, id string) (time.Time, error) {
	if _, err := r.backend.Stat(ctx, failedName(id)); err == nil {
		return time.Time{}, nil // ended for good: debris at once
	}
	info, err := r.backend.Stat(ctx, aliveName(id))
	if err == nil {
		return info.ModTime, nil
	}
	if !errors.Is(err, storage.ErrNotFound) {
		return time.Time{}, err
	}
	return r.NewestObject(ctx, id)
}

// checkPacks makes sure every pack m references is stored at its size.
func (r *Repository) checkPacks(ctx context.Context, m *Manifest) error {
	stored := map[string]int64{}
	prefixes := map[string]bool{BackupPrefix(m.ID) + "pack/": true}
	objs := append(append([]Pack(nil), m.Packs...), m.Maps...)
	for _, p := range objs {
		prefixes[p.Name[:strings.LastIndexByte(p.Name, '/')+1]] = true
	}
	for prefix := range prefixes {
		err := r.backend.List(ctx, prefix, func(o storage.ObjectInfo) error {
			stored[o.Name] = o.Size
			return nil
		})
		if err != nil {
			return fmt.Errorf("list packs: %w", err)
		}
	}
	for i, p := range objs {
		size, ok := stored[p.Name]
		if !ok && i < len(m.Packs) {
			// A repack may have moved the blocks and removed the pack:
			// fine if every block this backup names in it was moved.
			if err := r.movedWhole(ctx, m, i); err != nil {
				return fmt.Errorf("pack %s is gone (removed by a concurrent delete?) and %v; the backup is not committed", p.Name, err)
			}
			continue
		}
		if !ok {
			return fmt.Errorf("pack %s is gone (removed by a concurrent delete?); the backup is not committed", p.Name)
		}
		if size != p.Size {
			return fmt.Errorf("pack %s is %d bytes, %d were written; the backup is not committed", p.Name, size, p.Size)
		}
	}
	return nil
}

// movedWhole checks that pack i of m, no longer stored, has a relocation
// holding every block of m in it, and that the packs it moved them to are
// stored at their sizes.
func (r *Repository) movedWhole(ctx context.Context, m *Manifest, i int) error {
	name := m.Packs[i].Name
	if !isPackName(name) {
		return errors.New("it is no pack name")
	}
	rl, err := r.readRelocation(ctx, movedName(name))
	if err != nil {
		return fmt.Errorf("no relocation of it: %w", err)
	}
	for _, f := range m.Files {
		for _, b := range f.Refs() {
			if b.Pack == i {
				if _, ok := rl.find(b.Offset, b.Length); !ok {
					return fmt.Errorf("its relocation lacks the block at %d of %s", b.FileOffset, f.Path)
				}
			}
		}
	}
	for _, t := range rl.Targets {
		info, err := r.backend.Stat(ctx, t.Name)
		if err != nil || info.Size != t.Size {
			return fmt.Errorf("the pack it moved to, %s, is not stored at its size (%v)", t.Name, err)
		}
	}
	return nil
}

package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/pgkeep/pgkeep/storage"
)

// Repacking (docs/format.md "Repacking mostly dead packs"): once the
// backups that wrote most of a pack are deleted, the pack is kept whole
// for the few blocks kept backups still name. A repack copies those
// blocks, byte for byte (no key needed to move them, one is needed to know
// which are live), into a new pack of the same retired owner and records
// where each went in a relocation object, backups/<owner>/moved/<NNNNNN>,
// the commit point of the repack of one pack. Readers translate a block of
// a relocated pack through it when they read a manifest; no manifest or
// map is rewritten. The old pack is removed by a later repack run, once
// the relocation is older than a grace period and no kept or running
// backup names a block of the old pack that the relocation lacks.

// Relocation is the plain content of backups/<owner>/moved/<NNNNNN>.
type Relocation struct {
	// Pack is the relocated pack and Size its size.
	Pack string `json:"pack"`
	Size int64  `json:"size"`
	// Time is when the repack wrote it (the writer's clock; removal uses
	// the object's modification time, the store's clock).
	Time time.Time `json:"time"`
	// Targets are the new packs, which the blocks' To index.
	Targets []Pack `json:"targets"`
	// Blocks are the objects moved: bytes [Offset, Offset+Length) of Pack
	// are now bytes [ToOffset, ToOffset+Length) of Targets[To].
	Blocks []MovedBlock `json:"blocks"`
}

// MovedBlock is one moved object of a relocation.
type MovedBlock struct {
	Offset   int64 `json:"offset"`
	Length   int64 `json:"length"`
	To       int   `json:"to"`
	ToOffset int64 `json:"to_offset"`
}

// movedName is the relocation object of pack name.
func movedName(pack string) string {
	return strings.Replace(pack, "/pack/", "/moved/", 1)
}

// isMovedName reports whether name is backups/<id>/moved/<NNNNNN>.
func isMovedName(name string) bool {
	return strings.Contains(name, "/moved/") && isPackName(strings.Replace(name, "/moved/", "/pack/", 1))
}

// maxRelocationHops bounds a chain of relocations (a pack repacked into a
// pack that was repacked again); each repack run adds at most one hop.
const maxRelocationHops = 32

func (rl *Relocation) check() error {
	if !isPackName(rl.Pack) {
		return fmt.Errorf("%q is not a pack name", rl.Pack)
	}
	for _, t := range rl.Targets {
		if !isPackName(t.Name) || packOwner(t.Name) != packOwner(rl.Pack) || t.Name == rl.Pack || t.Size < 0 {
			return fmt.Errorf("target %q is not a pack of %s", t.Name, packOwner(rl.Pack))
		}
	}
	for _, b := range rl.Blocks {
		if b.To < 0 || b.To >= len(rl.Targets) || b.Offset < 0 || b.Length <= 0 || b.ToOffset < 0 || b.ToOffset+b.Length > rl.Targets[b.To].Size {
			return fmt.Errorf("moved block %+v does not fit its packs", b)
		}
	}
	return nil
}

// find returns where the object at [offset, offset+length) went.
func (rl *Relocation) find(offset, length int64) (MovedBlock, bool) {
	i := sort.Search(len(rl.Blocks), func(i int) bool { return rl.Blocks[i].Offset >= offset })
	if i < len(rl.Blocks) && rl.Blocks[i].Offset == offset && rl.Blocks[i].Length == length {
		return rl.Blocks[i], true
	}
	return MovedBlock{}, false
}

func (r *Repository) readRelocation(ctx context.Context, name string) (*Relocation, error) {
	rc, err := r.backend.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var rl Relocation
	if err := json.Unmarshal(data, &rl); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", name, ErrCorrupt, err)
	}
	if err := rl.check(); err != nil || movedName(rl.Pack) != name {
		return nil, fmt.Errorf("%s: %w: %v", name, ErrCorrupt, err)
	}
	sort.Slice(rl.Blocks, func(i, j int) bool { return rl.Blocks[i].Offset < rl.Blocks[j].Offset })
	return &rl, nil
}

// relocator reads the relocations of a manifest's packs, listing each
// owner's moved/ once.
type relocator struct {
	r      *Repository
	listed map[string]map[string]bool // owner -> its relocation objects
	rels   map[string]*Relocation     // pack -> its relocation, nil: none
}

func (r *Repository) newRelocator() *relocator {
	return &relocator{r: r, listed: map[string]map[string]bool{}, rels: map[string]*Relocation{}}
}

// of returns the relocation of pack, or nil.
func (t *relocator) of(ctx context.Context, pack string) (*Relocation, error) {
	if rl, ok := t.rels[pack]; ok {
		return rl, nil
	}
	owner := packOwner(pack)
	names, ok := t.listed[owner]
	if !ok {
		names = map[string]bool{}
		err := t.r.backend.List(ctx, BackupPrefix(owner)+"moved/", func(o storage.ObjectInfo) error {
			names[o.Name] = true
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list relocations of %s: %w", owner, err)
		}
		t.listed[owner] = names
	}
	var rl *Relocation
	if names[movedName(pack)] {
		var err error
		if rl, err = t.r.readRelocation(ctx, movedName(pack)); err != nil {
			return nil, err
		}
	}
	t.rels[pack] = rl
	return rl, nil
}

// step moves one hop: where the object at [offset, offset+length) of pack
// is now, if pack was relocated with it.
func (t *relocator) step(ctx context.Context, pack string, offset, length int64) (Pack, int64, bool, error) {
	if !isPackName(pack) {
		return Pack{}, 0, false, nil
	}
	rl, err := t.of(ctx, pack)
	if err != nil || rl == nil {
		return Pack{}, 0, false, err
	}
	mb, ok := rl.find(offset, length)
	if !ok {
		return Pack{}, 0, false, nil
	}
	return rl.Targets[mb.To], mb.ToOffset, true, nil
}

// applyRelocations makes every block of m that lies in a relocated pack
// name the pack it was moved to, and drops from m.Packs the relocated
// packs no block names any more. Own packs of a committed backup are
// never relocated (only packs of deleted backups are).
func (r *Repository) applyRelocations(ctx context.Context, m *Manifest, t *relocator) error {
	own := BackupPrefix(m.ID)
	idx := map[string]int{}
	for i, p := range m.Packs {
		idx[p.Name] = i
	}
	// Whether a pack of the table can have moved is asked once per pack
	// (on its first block), not once per block: a 15 GiB cluster's
	// manifest has 500k blocks in a few dozen packs. Packs added below are
	// targets, asked per block.
	const unknown, stays, mayMove = 0, 1, 2
	state := make([]int8, len(m.Packs))
	moved := false
	for fi := range m.Files {
		f := &m.Files[fi]
		err := EachObjectRef(f.Blocks, func(b *BlockRef) error {
			if b.Pack < 0 || b.Pack >= len(m.Packs) {
				return fmt.Errorf("%s: %w: pack %d of %d", f.Path, ErrCorrupt, b.Pack, len(m.Packs))
			}
			p := m.Packs[b.Pack]
			if b.Pack < len(state) {
				if state[b.Pack] == unknown {
					state[b.Pack] = stays
					if !strings.HasPrefix(p.Name, own) && isPackName(p.Name) {
						if rl, err := t.of(ctx, p.Name); err != nil {
							return err
						} else if rl != nil {
							state[b.Pack] = mayMove
						}
					}
				}
				if state[b.Pack] == stays {
					return nil
				}
			}
			if strings.HasPrefix(p.Name, own) {
				return nil
			}
			name, off, hops := p.Name, b.Offset, 0
			for {
				to, toOff, ok, err := t.step(ctx, name, off, b.Length)
				if err != nil {
					return err
				}
				if !ok {
					break
				}
				if hops++; hops > maxRelocationHops {
					return fmt.Errorf("pack %s: %w: relocations more than %d deep", p.Name, ErrCorrupt, maxRelocationHops)
				}
				name, off = to.Name, toOff
				if _, ok := idx[name]; !ok {
					idx[name] = len(m.Packs)
					m.Packs = append(m.Packs, to)
				}
			}
			if hops > 0 {
				b.Pack, b.Offset, moved = idx[name], off, true
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if !moved {
		return nil
	}
	// Compact: a relocated pack no block names may be gone already.
	used := make([]bool, len(m.Packs))
	for _, f := range m.Files {
		for _, b := range f.Refs() {
			used[b.Pack] = true
		}
	}
	renum := make([]int, len(m.Packs))
	var packs []Pack
	for i, p := range m.Packs {
		if !used[i] {
			if rl, err := t.of(ctx, p.Name); err != nil {
				return err
			} else if rl != nil {
				continue
			}
		}
		renum[i] = len(packs)
		packs = append(packs, p)
	}
	m.Packs = packs
	for fi := range m.Files {
		EachObjectRef(m.Files[fi].Blocks, func(b *BlockRef) error {
			b.Pack = renum[b.Pack]
			return nil
		})
	}
	return nil
}

// relocationsInUse adds to inUse what the relocations of the repository
// keep: the targets of a relocated pack in use, and a relocation object
// while its pack or any target (or a target's relocation) is in use,
// since a manifest or file map naming the old pack reads through it.
func (r *Repository) relocationsInUse(ctx context.Context, l backupListing, inUse map[string]bool) error {
	var rels []*Relocation
	for _, name := range l.moved {
		rl, err := r.readRelocation(ctx, name)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		rels = append(rels, rl)
	}
	for changed := true; changed; {
		changed = false
		mark := func(n string) {
			if !inUse[n] {
				inUse[n], changed = true, true
			}
		}
		for _, rl := range rels {
			if inUse[rl.Pack] {
				mark(movedName(rl.Pack))
				for _, t := range rl.Targets {
					mark(t.Name)
				}
			}
			for _, t := range rl.Targets {
				if inUse[t.Name] || inUse[movedName(t.Name)] {
					mark(movedName(rl.Pack))
				}
			}
		}
	}
	return nil
}

// RepackOptions bounds one repack run.
type RepackOptions struct {
	// MaxBytes bounds the bytes copied into new packs; 0 turns repacking
	// off (old packs of earlier runs are still removed).
	MaxBytes int64
	// Grace is how long a relocated pack stays after its relocation was
	// written: restores that read a manifest before it still read the old
	// pack (`pgkeep delete` defaults to DefaultRepackGrace; 0: at once).
	Grace time.Duration
	// Log, when set, gets a line per repacked and per removed pack.
	Log *slog.Logger
	// BeforeRelocate, a test hook, runs after the live blocks are known and
	// before the first relocation is written.
	BeforeRelocate func()
}

// Repacking thresholds: a pack whose live fraction is below repackAlways
// is always repacked (budget allowing); up to repackAtMost when the
// repository would otherwise hold more than repackTarget times its live
// data.
const (
	repackAlways = 0.5
	repackAtMost = 0.9
	repackTarget = 1.15
	// repackFirstNumber is the first pack number of a repack's new packs
	// (a backup writes far fewer packs), so delete tells them apart.
	repackFirstNumber = 500000
	// repackTargetMaxAge: a delete leaves a new pack of a repack that no
	// relocation names yet alone for this long (the relocation naming it
	// may be about to be written); a repack writes its relocation within
	// half of it or gives up.
	repackTargetMaxAge = time.Hour
	// DefaultRepackGrace keeps a relocated pack for in-flight restores.
	DefaultRepackGrace = 6 * time.Hour
	// DefaultMaxRepackBytes is retention.max_repack_bytes' default.
	DefaultMaxRepackBytes = 1 << 30
)

// RepackResult says what a run did.
type RepackResult struct {
	// Repacked are the packs relocated by this run, Copied the bytes
	// written to new packs, Freed the bytes of old packs removed.
	Repacked []string
	Copied   int64
	Removed  []string
	Freed    int64
	// DataBytes and LiveBytes are pack bytes in the repository and the
	// bytes of objects kept backups name, as this run found them (before
	// its own changes).
	DataBytes, LiveBytes int64
}

type liveRange struct{ off, length int64 }

// Repack relocates the live blocks of mostly dead packs of deleted
// backups, at most o.MaxBytes of them, then removes the old packs whose
// relocation is older than the grace period and that no kept or running
// backup still needs. It needs the key (it reads every committed
// manifest). Safe while backups, restores, wal-push and other deletes run
// (docs/format.md).
func (r *Repository) Repack(ctx context.Context, o RepackOptions) (RepackResult, error) {
	var res RepackResult
	grace := max(o.Grace, 0)
	if o.MaxBytes <= 0 {
		// Off: only what earlier runs relocated is finished.
		return res, r.removeRelocated(ctx, grace, &res, o.Log)
	}
	// What running backups hold is listed before the committed manifests
	// are read (docs/format.md: a backup that starts later reads a
	// committed manifest, whose blocks are then counted).
	l, err := r.listBackupObjects(ctx)
	if err != nil {
		return res, err
	}
	held, err := r.runningHolds(ctx, l, "")
	if err != nil {
		return res, err
	}
	// A running backup may read its reference through a relocation: the
	// packs the held ones moved to are held too.
	if err := r.relocationsInUse(ctx, l, held); err != nil {
		return res, err
	}
	packSize := map[string]int64{}
	err = r.backend.List(ctx, backupsPrefix, func(o storage.ObjectInfo) error {
		if isPackName(o.Name) {
			packSize[o.Name] = o.Size
			res.DataBytes += o.Size
		}
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("list packs: %w", err)
	}
	live := map[string]map[liveRange]bool{} // pack -> objects named
	for _, id := range l.committed {
		m, err := r.manifestIfCommitted(ctx, id)
		if err != nil {
			return res, fmt.Errorf("repack: %w", err)
		}
		if m == nil {
			continue // deleted meanwhile
		}
		for _, f := range m.Files {
			for _, b := range f.Refs() {
				name := m.Packs[b.Pack].Name
				if live[name] == nil {
					live[name] = map[liveRange]bool{}
				}
				live[name][liveRange{b.Offset, b.Length}] = true
			}
		}
	}
	liveBytes := map[string]int64{}
	for name, rs := range live {
		for x := range rs {
			liveBytes[name] += x.length
		}
		if _, ok := packSize[name]; ok {
			res.LiveBytes += liveBytes[name]
		}
	}
	movedSet := map[string]bool{}
	for _, n := range l.moved {
		movedSet[n] = true
	}
	{
		type cand struct {
			name       string
			size, live int64
		}
		var cands []cand
		for name, size := range packSize {
			if !l.retired[packOwner(name)] || held[name] || movedSet[movedName(name)] || size == 0 {
				continue
			}
			if frac := float64(liveBytes[name]) / float64(size); frac < repackAtMost {
				cands = append(cands, cand{name, size, liveBytes[name]})
			}
		}
		sort.Slice(cands, func(i, j int) bool {
			a, b := float64(cands[i].live)/float64(cands[i].size), float64(cands[j].live)/float64(cands[j].size)
			if a != b {
				return a < b
			}
			return cands[i].name < cands[j].name
		})
		if o.BeforeRelocate != nil {
			o.BeforeRelocate()
		}
		// What the repository will hold once relocated packs are gone.
		data := res.DataBytes
		for name, size := range packSize {
			if movedSet[movedName(name)] {
				data -= size
			}
		}
		for _, c := range cands {
			if float64(c.live)/float64(c.size) >= repackAlways && float64(data) <= repackTarget*float64(res.LiveBytes) {
				break
			}
			if res.Copied+c.live > o.MaxBytes {
				continue // a smaller one may still fit
			}
			if r.Config.Format < 4 {
				// Readers of format 3 would not follow a relocation.
				if err := r.upgradeFormat(ctx, 4); err != nil {
					return res, err
				}
			}
			ok, err := r.relocate(ctx, c.name, c.size, live[c.name], packSize)
			if err != nil {
				return res, err
			}
			if ok {
				res.Repacked = append(res.Repacked, c.name)
				res.Copied += c.live
				data -= c.size - c.live
				if o.Log != nil {
					o.Log.Info("repacked", "pack", c.name, "size", c.size, "live", c.live)
				}
			}
		}
	}
	if err := r.removeRelocated(ctx, grace, &res, o.Log); err != nil {
		return res, err
	}
	return res, nil
}

// relocate copies the objects ranges of pack (size bytes) into a new pack
// of its owner and writes the relocation; false if another delete
// relocated it first.
func (r *Repository) relocate(ctx context.Context, pack string, size int64, ranges map[liveRange]bool, packSize map[string]int64) (bool, error) {
	owner := packOwner(pack)
	next := repackFirstNumber
	for name := range packSize {
		if packOwner(name) == owner {
			var n int
			fmt.Sscanf(name[len(name)-6:], "%d", &n)
			next = max(next, n+1)
		}
	}
	started := time.Now()
	objs := make([]liveRange, 0, len(ranges))
	for x := range ranges {
		objs = append(objs, x)
	}
	sort.Slice(objs, func(i, j int) bool { return objs[i].off < objs[j].off })
	for _, x := range objs {
		if x.off+x.length > size {
			return false, fmt.Errorf("repack %s: a manifest names bytes %d..%d of a %d-byte pack", pack, x.off, x.off+x.length, size)
		}
	}
	var target Pack
	var blocks []MovedBlock
	for attempt := 0; ; attempt++ {
		if next > 999999 || attempt > 16 {
			return false, fmt.Errorf("repack %s: no free pack number", pack)
		}
		w := r.CreatePack(ctx, owner, next)
		blocks = blocks[:0]
		var werr error
		for _, x := range objs {
			rc, err := r.ReadPack(ctx, pack, x.off, x.length, size)
			if errors.Is(err, storage.ErrNotFound) {
				// Another delete removed it: no one names it any more.
				w.Abort(err)
				return false, nil
			}
			if err != nil {
				werr = fmt.Errorf("repack %s: %w", pack, err)
				break
			}
			at := w.Size()
			n, err := io.Copy(w, rc)
			rc.Close()
			if err == nil && n != x.length {
				err = fmt.Errorf("read %d of %d bytes", n, x.length)
			}
			if err != nil {
				werr = fmt.Errorf("repack %s at %d: %w", pack, x.off, err)
				break
			}
			blocks = append(blocks, MovedBlock{Offset: x.off, Length: x.length, ToOffset: at})
		}
		if werr != nil {
			w.Abort(werr)
			return false, werr
		}
		p, err := w.Close()
		if errors.Is(err, storage.ErrExists) {
			next++ // another delete took the number
			continue
		}
		if err != nil {
			return false, err
		}
		target = p
		packSize[p.Name] = p.Size
		break
	}
	if time.Since(started) > repackTargetMaxAge/2 {
		// A delete may take the new pack for unused soon: give up on it.
		if derr := r.backend.Delete(ctx, target.Name); derr != nil {
			return false, fmt.Errorf("repack %s: too slow, and removing its copy %s failed: %w", pack, target.Name, derr)
		}
		return false, nil
	}
	rl := Relocation{Pack: pack, Size: size, Time: time.Now().UTC(), Targets: []Pack{target}, Blocks: blocks}
	data, err := json.Marshal(rl)
	if err != nil {
		return false, err
	}
	// The commit point of this pack's repack.
	err = r.backend.Put(ctx, movedName(pack), bytes.NewReader(data), storage.PutOptions{IfAbsent: true})
	if errors.Is(err, storage.ErrExists) {
		// Another delete relocated it first; no one names our copy.
		if derr := r.backend.Delete(ctx, target.Name); derr != nil {
			return false, fmt.Errorf("repack %s: remove the unused copy %s: %w", pack, target.Name, derr)
		}
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("repack %s: write relocation: %w", pack, err)
	}
	return true, nil
}

// removeRelocated removes the relocated packs whose relocation is older
// than grace by the store's clock, unless a running backup may still
// name blocks of them (runningHolds) or a committed backup still names a
// block of one that its relocation lacks. The listing of running backups
// comes before the committed manifests are read (docs/format.md).
func (r *Repository) removeRelocated(ctx context.Context, grace time.Duration, res *RepackResult, log *slog.Logger) error {
	l, err := r.listBackupObjects(ctx)
	if err != nil || len(l.moved) == 0 {
		return err
	}
	now, err := r.storeNow(ctx)
	if err != nil {
		return err
	}
	var due []string
	for _, name := range l.moved {
		info, err := r.backend.Stat(ctx, name)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		old := strings.Replace(name, "/moved/", "/pack/", 1)
		if _, err := r.backend.Stat(ctx, old); errors.Is(err, storage.ErrNotFound) {
			continue // removed already
		} else if err != nil {
			return err
		}
		if now.Sub(info.ModTime) >= grace {
			due = append(due, old)
		}
	}
	if len(due) == 0 {
		return nil
	}
	held, err := r.runningHolds(ctx, l, "")
	if err != nil {
		return err
	}
	if err := r.relocationsInUse(ctx, l, held); err != nil {
		return err
	}
	named := map[string]bool{}
	for _, id := range l.committed {
		m, err := r.manifestIfCommitted(ctx, id)
		if err != nil {
			return fmt.Errorf("repack: %w", err)
		}
		if m == nil {
			continue // deleted meanwhile
		}
		for _, f := range m.Files {
			for _, b := range f.Refs() {
				named[m.Packs[b.Pack].Name] = true
			}
		}
	}
	for _, p := range due {
		if held[p] || named[p] {
			continue
		}
		info, err := r.backend.Stat(ctx, p)
		if err != nil {
			continue
		}
		if err := r.backend.Delete(ctx, p); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("remove relocated pack %s: %w", p, err)
		}
		res.Removed = append(res.Removed, p)
		res.Freed += info.Size
		if log != nil {
			log.Info("removed relocated pack", "pack", p, "size", info.Size)
		}
	}
	return nil
}

// isRepackTarget reports whether name is a pack a repack wrote.
func isRepackTarget(name string) bool {
	if !isPackName(name) {
		return false
	}
	var n int
	fmt.Sscanf(name[len(name)-6:], "%d", &n)
	return n >= repackFirstNumber
}

// isFreshRepackTarget reports whether o is a pack a repack may still be
// about to name in a relocation (a repack's, younger than
// repackTargetMaxAge by the store's clock now).
func isFreshRepackTarget(o storage.ObjectInfo, now time.Time) bool {
	return isRepackTarget(o.Name) && now.Sub(o.ModTime) < repackTargetMaxAge
}

// manifestIfCommitted reads backup id's manifest; nil, nil when the
// backup was deleted meanwhile (its summary is gone). Any other failure
// is an error: a repack must not take a backup it cannot read for one
// that names nothing.
func (r *Repository) manifestIfCommitted(ctx context.Context, id string) (*Manifest, error) {
	m, err := r.ReadManifest(ctx, id)
	if err == nil {
		return m, nil
	}
	if _, serr := r.backend.Stat(ctx, summaryName(id)); errors.Is(serr, storage.ErrNotFound) {
		return nil, nil
	}
	return nil, err
}

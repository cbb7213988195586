package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/walmap"
)

// Verify of the block maps beside the WAL: a segment's map must be exactly
// the map of the segment's archived bytes (walmap.Verify), a roll-up
// exactly the merge of its segments' maps. The verify cache remembers
// checked maps like WAL objects: a map and its segment both unchanged
// since they were checked are not read again.

// mapResult is the check of one map object (name empty: none).
type mapResult struct {
	name string
	err  error
}

// cachedObject reports whether the cache holds o unchanged since it was
// found good (by ETag, else by its plaintext header).
func (r *Repository) cachedObject(ctx context.Context, o storage.ObjectInfo, cache *VerifyCache) (header []byte, ok bool) {
	if cache == nil {
		return nil, false
	}
	if o.ETag == "" {
		h, err := r.rawHeader(ctx, o.Name)
		if err != nil {
			return nil, false
		}
		header = h
	}
	_, ok = cache.lookup(o, header)
	return header, ok
}

// checkWALObjectAndMap checks a segment and its block map mi, reading the
// segment once: from the cache when both are unchanged since they were
// checked, else in full, with the map rebuilt from its bytes.
func (r *Repository) checkWALObjectAndMap(ctx context.Context, obj walObject, mi storage.ObjectInfo, cache *VerifyCache) walCheck {
	header, mapCached := r.cachedObject(ctx, mi, cache)
	if mapCached {
		e, cached, err := r.checkWALObject(ctx, obj, cache, nil)
		if cached || err != nil {
			// The map was checked against these very bytes (or the
			// segment's own problem is reported).
			return walCheck{obj: obj, entry: e, cached: cached, err: err, mp: mapResult{name: mi.Name}}
		}
		// The segment was read again but not kept: read it once more below.
	}
	var data []byte
	e, cached, err := r.checkWALObject(ctx, obj, cache, &data)
	res := walCheck{obj: obj, entry: e, cached: cached, err: err}
	if err != nil {
		return res
	}
	res.mp = mapResult{name: mi.Name, err: r.checkWALMap(ctx, mi.Name, obj.file, data)}
	if res.mp.err == nil && cache != nil {
		if mi.ETag != "" {
			header = nil
		}
		cache.store(mi, header, cacheEntry{Verified: time.Now().UTC()})
	}
	return res
}

// checkWALMap holds the map object name to the segment bytes data.
func (r *Repository) checkWALMap(ctx context.Context, name string, wf pg.WALFile, data []byte) error {
	m, err := r.readMapObject(ctx, name)
	if err != nil {
		return err
	}
	if err := walmap.Verify(data, wf.Name, m); err != nil {
		return fmt.Errorf("block map does not match its segment: %w", err)
	}
	return nil
}

// readMapObject decodes a map object, holding it to the repository's
// encryption.
func (r *Repository) readMapObject(ctx context.Context, name string) (*walmap.Map, error) {
	var buf bytes.Buffer
	h, err := r.GetObject(ctx, name, &buf)
	if err != nil {
		return nil, trimName(err, name)
	}
	if r.Config.Encryption != EncryptionNone && !h.Encrypted {
		return nil, fmt.Errorf("stored unencrypted, but the repository is encrypted (%s)", r.Config.Encryption)
	}
	return walmap.Unmarshal(buf.Bytes())
}

// verifyRollups checks every roll-up whose segments all have maps against
// the merge of those maps; it returns how many it checked and the
// problems, each naming the roll-up.
func (r *Repository) verifyRollups(ctx context.Context, a *WALArchive, cache *VerifyCache) (int, []Problem) {
	var names []string
	for name := range a.maps {
		if _, _, rollup, _ := parseWALMapName(name[strings.LastIndexByte(name, '/')+1:]); rollup {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	var probs []Problem
	checked := 0
	for _, name := range names {
		if ctx.Err() != nil {
			break
		}
		o := a.maps[name]
		header, ok := r.cachedObject(ctx, o, cache)
		if ok {
			checked++
			continue
		}
		err := r.checkRollup(ctx, a, name)
		if errors.Is(err, errRollupUnchecked) {
			continue
		}
		checked++
		if err != nil {
			probs = append(probs, Problem{Object: name, What: err.Error()})
			if cache != nil {
				cache.forget(name)
			}
			continue
		}
		if cache != nil {
			if o.ETag != "" {
				header = nil
			}
			cache.store(o, header, cacheEntry{Verified: time.Now().UTC()})
		}
	}
	return checked, probs
}

// errRollupUnchecked: some of the roll-up's segment maps are gone
// (retention deletes a group's maps segment by segment): nothing to hold
// it to.
var errRollupUnchecked = errors.New("roll-up cannot be checked")

func (r *Repository) checkRollup(ctx context.Context, a *WALArchive, name string) error {
	first, last, _, _ := parseWALMapName(name[strings.LastIndexByte(name, '/')+1:])
	stored, err := r.readMapObject(ctx, name)
	if err != nil {
		return err
	}
	size := int64(stored.SegmentSize)
	if !pg.ValidSegmentSize(size) {
		return fmt.Errorf("roll-up of %d-byte segments", size)
	}
	per := uint64(pg.SegmentsPerLog(size))
	var maps []*walmap.Map
	for n := first.SegNo(size); n <= last.SegNo(size); n++ {
		wf, _ := pg.ParseWALFileName(pg.SegmentName(first.Timeline, uint32(n/per), uint32(n%per)))
		mn := WALMapObjectName(wf)
		if _, ok := a.maps[mn]; !ok {
			return errRollupUnchecked
		}
		m, err := r.readMapObject(ctx, mn)
		if err != nil {
			return fmt.Errorf("%s: %w", mn, err)
		}
		maps = append(maps, m)
	}
	want, err := walmap.Merge(maps...)
	if err != nil {
		return fmt.Errorf("the segments' maps do not merge: %w", err)
	}
	if !bytes.Equal(want.Marshal(), stored.Marshal()) {
		return fmt.Errorf("roll-up differs from the merge of the block maps of %s..%s", first.Name, last.Name)
	}
	return nil
}

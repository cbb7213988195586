package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/storage"
)

// walObject is one archived WAL object as listed.
type walObject struct {
	info storage.ObjectInfo
	file pg.WALFile
}

// walCheck is the check of one WAL object (and of its block map, if any).
type walCheck struct {
	obj    walObject
	entry  cacheEntry
	cached bool
	err    error
	mp     mapResult
}

// walExpect is what every segment must agree with, and where that came
// from (for messages).
type walExpect struct {
	sysid       uint64
	sysidFrom   string // "the repository belongs to", "backup X is of"
	segSize     int64
	segSizeFrom string // backup ID
}

// maxHistorySize bounds how much of a history or backup history file is
// kept in memory to parse (real ones are a few hundred bytes).
const maxHistorySize = 1 << 20

// verifyWAL reads every WAL object of a (or takes it from the cache) and
// checks it: header, size and SHA-256 by decoding it in full (decrypting
// when the repository is encrypted), then a segment's long page header
// against its name, size and the repository's system, and a history
// file's content.
func (r *Repository) verifyWAL(ctx context.Context, a *WALArchive, want walExpect, o VerifyOptions) (WALStats, []Problem, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	workers := o.Concurrency
	if workers <= 0 {
		workers = 4
	}
	stats := WALStats{Objects: len(a.objects)}
	results := make([]walCheck, len(a.objects))
	forEachIndex(len(a.objects), workers, func(i int) {
		if ctx.Err() != nil {
			return // reported below
		}
		obj := a.objects[i]
		mi, hasMap := a.maps[WALMapObjectName(obj.file)]
		if !hasMap {
			e, cached, err := r.checkWALObject(ctx, obj, o.Cache, nil)
			results[i] = walCheck{obj: obj, entry: e, cached: cached, err: err}
			return
		}
		results[i] = r.checkWALObjectAndMap(ctx, obj, mi, o.Cache)
	})
	if err := ctx.Err(); err != nil {
		return stats, nil, fmt.Errorf("verify WAL: %w", err)
	}

	var probs []Problem
	var noKey []string
	sysids := map[uint64][]string{}
	for _, res := range results {
		name := res.obj.info.Name
		err := res.err
		if err == nil {
			err = want.check(res.obj.file, res.entry)
		}
		switch {
		case errors.Is(err, ErrNoIdentity):
			noKey = append(noKey, name)
		case err != nil:
			probs = append(probs, Problem{Object: name, What: err.Error()})
		}
		if m := res.mp; m.name != "" {
			stats.Maps++
			if m.err != nil {
				stats.Bad++
				probs = append(probs, Problem{Object: m.name, What: m.err.Error()})
				if o.Cache != nil {
					o.Cache.forget(m.name)
				}
			}
		}
		if res.cached {
			stats.Cached++
		} else {
			stats.Read++
		}
		if err != nil {
			stats.Bad++
			if o.Cache != nil {
				o.Cache.forget(name)
			}
			continue
		}
		if res.entry.SystemIdentifier != 0 {
			sysids[res.entry.SystemIdentifier] = append(sysids[res.entry.SystemIdentifier], res.obj.file.Name)
		}
	}
	rs, rprobs := r.verifyRollups(ctx, a, o.Cache)
	stats.Maps += rs
	stats.Bad += len(rprobs)
	probs = append(probs, rprobs...)
	if len(noKey) > 0 {
		probs = append(probs, Problem{What: fmt.Sprintf(
			"%d WAL object(s) are encrypted and no age identity is configured, so their content was not checked (first %s); set encryption.identity_file or encryption.passphrase_file",
			len(noKey), noKey[0])})
	}
	if want.sysid == 0 && len(sysids) > 1 {
		// No system to hold them to, but they cannot all be right.
		var parts []string
		for id, names := range sysids {
			sort.Strings(names)
			parts = append(parts, fmt.Sprintf("%d (%d segment(s), first %s)", id, len(names), names[0]))
		}
		sort.Strings(parts)
		probs = append(probs, Problem{What: "WAL of more than one database system is archived in this repository: " + strings.Join(parts, ", ")})
	}
	if o.Cache != nil {
		if err := o.Cache.Save(); err != nil {
			log.Warn("verify cache not saved; the next verify reads every WAL object again", "err", err)
		}
	}
	return stats, probs, nil
}

// check holds a checked object's facts to the repository's system and
// segment size; it runs for cached objects too.
func (w walExpect) check(f pg.WALFile, e cacheEntry) error {
	if f.Kind != pg.KindSegment && f.Kind != pg.KindPartial {
		return nil
	}
	if w.sysid != 0 && e.SystemIdentifier != w.sysid {
		return fmt.Errorf("segment of database system %d, but %s %d", e.SystemIdentifier, w.sysidFrom, w.sysid)
	}
	if w.segSize != 0 && e.SegmentSize != w.segSize {
		return fmt.Errorf("segment of %d bytes, but backup %s has %d-byte segments", e.SegmentSize, w.segSizeFrom, w.segSize)
	}
	return nil
}

// checkWALObject returns the facts of one WAL object, from the cache when
// it is unchanged since it was last read in full, else by reading it.
// With keep non-nil the object is read in full even if cached, and its
// content is left in *keep (for checking its block map).
func (r *Repository) checkWALObject(ctx context.Context, obj walObject, cache *VerifyCache, keep *[]byte) (cacheEntry, bool, error) {
	if want := WALObjectName(obj.file); obj.info.Name != want {
		return cacheEntry{}, false, fmt.Errorf("misplaced: %s belongs at %s, where recovery looks for it", obj.file.Name, want)
	}
	var header []byte
	if cache != nil {
		if obj.info.ETag == "" {
			// Without a version tag from the store, the header (content
			// size and SHA-256) tells a replaced object apart. Reading it
			// is cheap; failing to is found by the full read below.
			if h, err := r.rawHeader(ctx, obj.info.Name); err == nil {
				header = h
			}
		}
		if e, ok := cache.lookup(obj.info, header); ok && (header != nil || obj.info.ETag != "") && keep == nil {
			return e, true, nil
		}
	}
	e, raw, err := r.readWALObject(ctx, obj, keep)
	if err != nil {
		return e, false, err
	}
	if cache != nil {
		if obj.info.ETag != "" {
			raw = nil
		}
		cache.store(obj.info, raw, e)
	}
	return e, false, nil
}

// rawHeader reads the first headerSize bytes of an object as stored.
func (r *Repository) rawHeader(ctx context.Context, name string) ([]byte, error) {
	rc, err := r.backend.GetRange(ctx, name, 0, headerSize)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b := make([]byte, headerSize)
	if _, err := io.ReadFull(rc, b); err != nil {
		return nil, err
	}
	return b, nil
}

// readWALObject decodes an object in full and checks its content. It
// returns the object's facts and its raw header.
func (r *Repository) readWALObject(ctx context.Context, obj walObject, keepAll *[]byte) (cacheEntry, []byte, error) {
	rc, err := r.backend.Get(ctx, obj.info.Name)
	if err != nil {
		return cacheEntry{}, nil, trimName(err, obj.info.Name)
	}
	defer rc.Close()
	raw := &prefixCapture{r: rc, want: headerSize}
	keep := 0
	switch obj.file.Kind {
	case pg.KindSegment, pg.KindPartial:
		keep = pg.WALLongPageHeaderSize
	case pg.KindHistory, pg.KindBackup:
		keep = maxHistorySize
	}
	if keepAll != nil {
		keep = 1<<30 + 1 // the largest segment
	}
	sink := &prefixSink{want: keep}
	h, err := r.codec.Decode(sink, raw)
	if err != nil {
		return cacheEntry{}, nil, err
	}
	if keepAll != nil {
		*keepAll = sink.buf
	}
	if r.Config.Encryption != EncryptionNone && !h.Encrypted {
		return cacheEntry{}, nil, fmt.Errorf("stored unencrypted, but the repository is encrypted (%s)", r.Config.Encryption)
	}
	e := cacheEntry{Verified: time.Now().UTC()}
	switch obj.file.Kind {
	case pg.KindSegment, pg.KindPartial:
		ph, err := pg.ParseWALPageHeader(sink.buf)
		if err != nil {
			return e, nil, err
		}
		if err := ph.CheckSegment(obj.file, h.Size); err != nil {
			return e, nil, errors.New(strings.TrimPrefix(err.Error(), obj.file.Name+": "))
		}
		e.SystemIdentifier, e.SegmentSize = ph.SystemIdentifier, int64(ph.SegmentSize)
	case pg.KindHistory:
		if h.Size > maxHistorySize {
			return e, nil, fmt.Errorf("history file of %d bytes (real ones are a few hundred)", h.Size)
		}
		hist, err := pg.ParseHistory(sink.buf)
		if err != nil {
			return e, nil, err
		}
		if len(hist) == 0 {
			return e, nil, errors.New("history file names no timeline switch")
		}
		for _, s := range hist {
			if s.Parent >= obj.file.Timeline {
				return e, nil, fmt.Errorf("history of timeline %d names timeline %d as a parent", obj.file.Timeline, s.Parent)
			}
		}
	case pg.KindBackup:
		if h.Size == 0 {
			return e, nil, errors.New("backup history file is empty")
		}
	}
	return e, raw.buf, nil
}

// trimName drops the object name a storage error starts with ("open
// wal/…/X: permission denied"): the problem is reported under it.
func trimName(err error, name string) error {
	msg := err.Error()
	if i := strings.Index(msg, name+": "); i >= 0 && i < 16 {
		return errors.New(strings.TrimSpace(msg[:i]) + ": " + msg[i+len(name)+2:])
	}
	return err
}

// prefixSink keeps the first want bytes written to it and counts the rest.
type prefixSink struct {
	want int
	buf  []byte
}

func (s *prefixSink) Write(p []byte) (int, error) {
	if n := s.want - len(s.buf); n > 0 {
		s.buf = append(s.buf, p[:min(n, len(p))]...)
	}
	return len(p), nil
}

// prefixCapture passes a reader through, keeping its first want bytes.
type prefixCapture struct {
	r    io.Reader
	want int
	buf  []byte
}

func (c *prefixCapture) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if k := c.want - len(c.buf); k > 0 && n > 0 {
		c.buf = append(c.buf, p[:min(k, n)]...)
	}
	return n, err
}

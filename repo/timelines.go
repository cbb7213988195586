package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/storage"
)

// ErrDiverged means a WAL segment holds WAL of a timeline past the point
// where a newer, archived timeline forked from it: after a failover, what
// the old primary wrote there was never part of the surviving history.
// Recovery asks for an older timeline's segment when the newer timeline's
// is not archived yet, so storing it would let recovery replay a fork.
var ErrDiverged = errors.New("segment holds WAL past the point where a newer timeline forked from its timeline; refusing to archive diverged WAL")

// ForkPoint returns the earliest point at which an archived history file
// says a newer timeline left timeline tli, and whether there is one.
// History files are immutable, so the host's binding cache keeps them.
func (r *Repository) ForkPoint(ctx context.Context, tli uint32) (pg.LSN, uint32, bool, error) {
	all, err := r.historyNames(ctx)
	if err != nil {
		return 0, 0, false, err
	}
	var names []string
	for _, name := range all {
		if wf, err := pg.ParseWALFileName(name); err == nil && wf.Timeline > tli {
			names = append(names, name)
		}
	}
	var (
		fork  pg.LSN
		child uint32
		found bool
	)
	for _, name := range names {
		data, err := r.readHistory(ctx, name)
		if err != nil {
			return 0, 0, false, err
		}
		sw, err := pg.ParseHistory(data)
		if err != nil {
			return 0, 0, false, fmt.Errorf("archived %s: %w", name, err)
		}
		wf, _ := pg.ParseWALFileName(name)
		for _, s := range sw {
			if s.Parent == tli && (!found || s.Switch < fork) {
				fork, child, found = s.Switch, wf.Timeline, true
			}
		}
	}
	return fork, child, found, nil
}

// historyListValid bounds how long one listing of wal/history/ answers
// for: a wal-push call pushes up to push_ahead files and lists once, and
// a history file newer than the listing is one PostgreSQL archived while
// this process was running.
const historyListValid = 2 * time.Second

// historyNames lists the archived history files, at most once per
// historyListValid.
func (r *Repository) historyNames(ctx context.Context) ([]string, error) {
	r.historyMu.Lock()
	defer r.historyMu.Unlock()
	if r.historyList != nil && time.Since(r.historyListed) < historyListValid {
		return r.historyList, nil
	}
	names := []string{}
	err := r.backend.List(ctx, "wal/history/", func(o storage.ObjectInfo) error {
		name := o.Name[strings.LastIndexByte(o.Name, '/')+1:]
		if wf, err := pg.ParseWALFileName(name); err == nil && wf.Kind == pg.KindHistory {
			names = append(names, name)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list timeline history: %w", err)
	}
	r.historyList, r.historyListed = names, time.Now()
	return names, nil
}

// readHistory returns an archived history file's content.
func (r *Repository) readHistory(ctx context.Context, name string) ([]byte, error) {
	note := ""
	if r.bindCache != "" {
		note = filepath.Join(r.bindCache, "history-"+r.ID()+"-"+name)
		if data, err := os.ReadFile(note); err == nil {
			return data, nil
		}
	}
	var buf bytes.Buffer
	wf := pg.WALFile{Name: name, Kind: pg.KindHistory}
	if _, err := r.GetObject(ctx, WALObjectName(wf), &buf); err != nil {
		return nil, fmt.Errorf("read archived %s: %w", name, err)
	}
	if note != "" {
		writeNote(note, buf.Bytes())
	}
	return buf.Bytes(), nil
}

// CheckNotDiverged refuses segment wf (of segmentSize bytes) when it holds
// WAL past a newer archived timeline's fork from wf's timeline.
func (r *Repository) CheckNotDiverged(ctx context.Context, wf pg.WALFile, segmentSize int64) error {
	fork, child, ok, err := r.ForkPoint(ctx, wf.Timeline)
	if err != nil || !ok {
		return err
	}
	end := pg.LSN((wf.SegNo(segmentSize) + 1) * uint64(segmentSize))
	if end > fork {
		return fmt.Errorf("timeline %d forked from timeline %d at %s, and %s ends at %s: %w",
			child, wf.Timeline, fork, wf.Name, end, ErrDiverged)
	}
	return nil
}

// NewestTimeline is the highest timeline with an archived history file (1
// when there is none): the timeline recovery_target_timeline = 'latest'
// recovers to.
func (r *Repository) NewestTimeline(ctx context.Context) (uint32, error) {
	newest := uint32(1)
	err := r.backend.List(ctx, "wal/history/", func(o storage.ObjectInfo) error {
		name := o.Name[strings.LastIndexByte(o.Name, '/')+1:]
		if wf, err := pg.ParseWALFileName(name); err == nil && wf.Kind == pg.KindHistory && wf.Timeline > newest {
			newest = wf.Timeline
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("list timeline history: %w", err)
	}
	return newest, nil
}

// TimelineHistory returns timeline tli's archived history: the switches
// that led to it, oldest first (none for timeline 1).
func (r *Repository) TimelineHistory(ctx context.Context, tli uint32) ([]pg.TimelineSwitch, error) {
	if tli <= 1 {
		return nil, nil
	}
	name := fmt.Sprintf("%08X.history", tli)
	data, err := r.readHistory(ctx, name)
	if err != nil {
		return nil, err
	}
	sw, err := pg.ParseHistory(data)
	if err != nil {
		return nil, fmt.Errorf("archived %s: %w", name, err)
	}
	return sw, nil
}

// OnTimelinePath reports whether a backup can be recovered along timeline
// tli: PostgreSQL refuses to start unless the timeline its history assigns
// to the backup's WAL is the one the backup was taken on. Like
// PostgreSQL's tliOfPointInHistory, a point belongs to the newest timeline
// of the history whose range holds it: a timeline begins where the
// previous line of the history switched, so a timeline that a rollback
// forked below its own beginning (1 0/9000000, 2 0/502E618) hides the
// older timeline's WAL past that point.
func OnTimelinePath(b Summary, tli uint32, history []pg.TimelineSwitch) bool {
	start, err1 := pg.ParseLSN(b.StartLSN)
	stop, err2 := pg.ParseLSN(b.StopLSN)
	if err1 != nil || err2 != nil {
		return false
	}
	return TimelineOfPoint(start, tli, history) == b.Timeline &&
		TimelineOfPoint(max(stop, 1)-1, tli, history) == b.Timeline
}

// TimelineOfPoint is the timeline that timeline tli's history assigns to
// WAL position p (0 if none).
func TimelineOfPoint(p pg.LSN, tli uint32, history []pg.TimelineSwitch) uint32 {
	type span struct {
		tli        uint32
		begin, end pg.LSN // end 0: open
	}
	spans := make([]span, 0, len(history)+1)
	var begin pg.LSN
	for _, s := range history {
		spans = append(spans, span{s.Parent, begin, s.Switch})
		begin = s.Switch
	}
	spans = append(spans, span{tli, begin, 0})
	for i := len(spans) - 1; i >= 0; i-- {
		s := spans[i]
		if p >= s.begin && (s.end == 0 || p < s.end) {
			return s.tli
		}
	}
	return 0
}

// NewestWAL returns the archived segment furthest along (highest timeline,
// then segment number) and when the store received it; ok is false when
// no segment is archived.
func (r *Repository) NewestWAL(ctx context.Context) (pg.WALFile, time.Time, bool, error) {
	var (
		best pg.WALFile
		at   time.Time
		ok   bool
	)
	err := r.backend.List(ctx, "wal/", func(o storage.ObjectInfo) error {
		wf, err := pg.ParseWALFileName(o.Name[strings.LastIndexByte(o.Name, '/')+1:])
		if err != nil || wf.Kind != pg.KindSegment {
			return nil
		}
		if !ok || wf.Timeline > best.Timeline || (wf.Timeline == best.Timeline && wf.Name > best.Name) {
			best, at, ok = wf, o.ModTime, true
		}
		return nil
	})
	if err != nil {
		return best, at, false, fmt.Errorf("list WAL: %w", err)
	}
	return best, at, ok, nil
}

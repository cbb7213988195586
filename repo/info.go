package repo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/storage"
)

// Info is the repository at a glance (`pgkeep info`): what is archived,
// what a restore can reach, the backups and a backup running now. It is
// computed from one listing of wal/ and one of backups/, plus the backups'
// summaries, the timeline history files, and the keep flags and
// heartbeats that the listing shows to exist: never a GET per segment.
type Info struct {
	Repository       string `json:"repository"`
	ID               string `json:"id"`
	Encryption       string `json:"encryption"`
	SystemIdentifier string `json:"system_identifier,omitempty"`
	// SegmentSize is the WAL segment size the ranges are computed with
	// (the newest backup's; 16 MiB without backups).
	SegmentSize int64          `json:"wal_segment_size"`
	Size        InfoSize       `json:"size"`
	Timelines   []TimelineInfo `json:"timelines"`
	// RecoveryWindow is absent when no backup can be restored.
	RecoveryWindow *RecoveryWindow `json:"recovery_window,omitempty"`
	Backups        []BackupInfo    `json:"backups"`
	Running        []RunningBackup `json:"running"`
	// Incomplete are uncommitted backups that are not running: debris
	// `delete` removes.
	Incomplete []string `json:"incomplete"`
}

// InfoSize is what the repository stores, in bytes as listed.
type InfoSize struct {
	Total int64 `json:"total"`
	WAL   int64 `json:"wal"`
	// WALMaps is the block maps and roll-ups stored beside the WAL.
	WALMaps    int64 `json:"wal_maps"`
	Backups    int64 `json:"backups"`
	Incomplete int64 `json:"incomplete"`
}

// TimelineInfo is one timeline's archived WAL.
type TimelineInfo struct {
	Timeline uint32 `json:"timeline"`
	// Parent and Begin are where the timeline forked (from its history
	// file); absent for timeline 1 or without a history file.
	Parent   uint32 `json:"parent,omitempty"`
	Begin    string `json:"begin_lsn,omitempty"`
	FirstWAL string `json:"first_wal,omitempty"`
	LastWAL  string `json:"last_wal,omitempty"`
	// LastArchived is when the store received LastWAL.
	LastArchived *time.Time `json:"last_archived,omitempty"`
	Segments     int        `json:"segments"`
	Partial      int        `json:"partial,omitempty"`
	Bytes        int64      `json:"bytes"`
	// Gaps are the missing stretches between FirstWAL and LastWAL, the
	// first MaxInfoGaps of GapCount.
	Gaps     []WALGap `json:"gaps"`
	GapCount int      `json:"gap_count"`
}

// WALGap is a stretch of missing segments, From to To inclusive.
type WALGap struct {
	From     string `json:"from"`
	To       string `json:"to"`
	Segments uint64 `json:"segments"`
}

// MaxInfoGaps bounds the gaps listed per timeline.
const MaxInfoGaps = 20

// RecoveryWindow is the first and last point a restore can reach along
// Timeline (the one recovery_target_timeline = latest follows): from the
// oldest backup's consistency point (its stop LSN and time) to the end of
// the newest segment archived without a gap after the newest backup.
type RecoveryWindow struct {
	Timeline    uint32    `json:"timeline"`
	FirstBackup string    `json:"first_backup"`
	FirstLSN    string    `json:"first_lsn"`
	FirstTime   time.Time `json:"first_time"`
	LastBackup  string    `json:"last_backup"`
	LastWAL     string    `json:"last_wal"`
	LastLSN     string    `json:"last_lsn"`
	// LastTime is when the store received LastWAL: WAL written up to
	// about then is restorable.
	LastTime time.Time `json:"last_time"`
}

// String is the window in one line, for messages.
func (w *RecoveryWindow) String() string {
	return fmt.Sprintf("from %s (LSN %s, end of backup %s) to %s (LSN %s, end of %s) on timeline %d",
		w.FirstTime.UTC().Format(time.RFC3339Nano), w.FirstLSN, w.FirstBackup,
		w.LastTime.UTC().Format(time.RFC3339), w.LastLSN, w.LastWAL, w.Timeline)
}

// BackupInfo is a committed backup with its keep flag.
type BackupInfo struct {
	Summary
	Kept      bool       `json:"kept"`
	KeepUntil *time.Time `json:"keep_until,omitempty"`
	// OnRecoveryPath says whether restore (recovering along the
	// recovery window's timeline) can use the backup.
	OnRecoveryPath bool `json:"on_recovery_path"`
}

// RunningBackup is an uncommitted backup whose heartbeat is recent.
type RunningBackup struct {
	ID         string    `json:"id"`
	Host       string    `json:"host,omitempty"`
	PID        int       `json:"pid,omitempty"`
	Started    time.Time `json:"started,omitzero"`
	Heartbeat  time.Time `json:"heartbeat"`
	BytesDone  int64     `json:"bytes_done"`
	BytesTotal int64     `json:"bytes_total"`
	// Rate is bytes read per second since the start.
	Rate float64 `json:"bytes_per_second"`
}

// maxInfoHistories bounds the history files Info reads.
const maxInfoHistories = 1000

// Info computes the repository's Info at now (now tells running backups
// from debris by their heartbeat's age).
func (r *Repository) Info(ctx context.Context, now time.Time) (*Info, error) {
	inf := &Info{Repository: r.backend.String(), ID: r.ID(), Encryption: r.Config.Encryption,
		SystemIdentifier: r.Config.SystemIdentifier, Timelines: []TimelineInfo{}, Backups: []BackupInfo{},
		Running: []RunningBackup{}, Incomplete: []string{}}

	l, err := r.listBackupObjects(ctx)
	if err != nil {
		return nil, err
	}
	backups, err := r.readSummaries(ctx, l.committed)
	if err != nil {
		return nil, err
	}
	kept, err := r.readKeeps(ctx, l)
	if err != nil {
		return nil, err
	}
	for id, n := range l.size {
		inf.Size.Backups += n
		if !contains(l.committed, id) {
			inf.Size.Incomplete += n
		}
	}
	inf.SegmentSize = 16 << 20
	for i := len(backups) - 1; i >= 0; i-- {
		if pg.ValidSegmentSize(backups[i].SegmentSize) {
			inf.SegmentSize = backups[i].SegmentSize
			break
		}
	}
	if inf.SystemIdentifier == "" && len(backups) > 0 {
		inf.SystemIdentifier = backups[len(backups)-1].SystemIdentifier
	}
	seg := inf.SegmentSize

	// One listing of wal/: segments by name, per timeline.
	segs := map[string]storage.ObjectInfo{}
	perTL := map[uint32][]uint64{}
	tls := map[uint32]*TimelineInfo{}
	tl := func(n uint32) *TimelineInfo {
		if tls[n] == nil {
			tls[n] = &TimelineInfo{Timeline: n, Gaps: []WALGap{}}
		}
		return tls[n]
	}
	var histories []pg.WALFile
	err = r.backend.List(ctx, "wal/", func(o storage.ObjectInfo) error {
		base := o.Name[strings.LastIndexByte(o.Name, '/')+1:]
		if IsWALMapName(base) {
			inf.Size.WALMaps += o.Size
			return nil
		}
		inf.Size.WAL += o.Size
		wf, err := pg.ParseWALFileName(base)
		if err != nil {
			return nil
		}
		switch wf.Kind {
		case pg.KindSegment:
			segs[wf.Name] = o
			t := tl(wf.Timeline)
			t.Segments++
			t.Bytes += o.Size
			perTL[wf.Timeline] = append(perTL[wf.Timeline], wf.SegNo(seg))
		case pg.KindPartial:
			t := tl(wf.Timeline)
			t.Partial++
			t.Bytes += o.Size
		case pg.KindHistory:
			tl(wf.Timeline)
			histories = append(histories, wf)
		default:
			tl(wf.Timeline).Bytes += o.Size
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list WAL: %w", err)
	}
	inf.Size.Total = inf.Size.WAL + inf.Size.WALMaps + inf.Size.Backups + int64(len(r.rawConfig))

	// History files: where each timeline began.
	if len(histories) > maxInfoHistories {
		return nil, fmt.Errorf("%d timeline history files: more than the %d info reads", len(histories), maxInfoHistories)
	}
	hist := map[uint32][]pg.TimelineSwitch{}
	for _, h := range histories {
		data, err := r.readHistory(ctx, h.Name)
		if err != nil {
			return nil, err
		}
		sw, err := pg.ParseHistory(data)
		if err != nil {
			return nil, fmt.Errorf("archived %s: %w", h.Name, err)
		}
		hist[h.Timeline] = sw
		if len(sw) > 0 {
			t := tl(h.Timeline)
			t.Parent, t.Begin = sw[len(sw)-1].Parent, sw[len(sw)-1].Switch.String()
		}
	}

	per := uint64(pg.SegmentsPerLog(seg))
	name := func(tli uint32, n uint64) string { return pg.SegmentName(tli, uint32(n/per), uint32(n%per)) }
	for n, t := range tls {
		nums := perTL[n]
		sort.Slice(nums, func(i, j int) bool { return nums[i] < nums[j] })
		if len(nums) > 0 {
			t.FirstWAL, t.LastWAL = name(n, nums[0]), name(n, nums[len(nums)-1])
			at := segs[t.LastWAL].ModTime
			t.LastArchived = &at
		}
		for i := 1; i < len(nums); i++ {
			if d := nums[i] - nums[i-1]; d > 1 {
				t.GapCount++
				if len(t.Gaps) < MaxInfoGaps {
					t.Gaps = append(t.Gaps, WALGap{From: name(n, nums[i-1]+1), To: name(n, nums[i]-1), Segments: d - 1})
				}
			}
		}
		inf.Timelines = append(inf.Timelines, *t)
	}
	sort.Slice(inf.Timelines, func(i, j int) bool { return inf.Timelines[i].Timeline < inf.Timelines[j].Timeline })

	// The timeline recovery follows by default (as restore chooses it),
	// and the backups on its history.
	latest := uint32(1)
	for n := range hist {
		latest = max(latest, n)
	}
	for _, b := range backups {
		latest = max(latest, b.Timeline)
	}
	path := hist[latest]
	for _, b := range backups {
		bi := BackupInfo{Summary: b, OnRecoveryPath: OnTimelinePath(b, latest, path)}
		if k, ok := kept[b.ID]; ok && k.Active(now) {
			bi.Kept, bi.KeepUntil = true, k.Until
		}
		inf.Backups = append(inf.Backups, bi)
	}
	inf.RecoveryWindow = recoveryWindow(inf.Backups, latest, path, segs, seg)

	for _, id := range l.debris {
		if l.retired[id] {
			continue // a deleted backup's packs others still reference
		}
		a, ok := l.alive[id]
		if !ok || now.Sub(a.ModTime) >= RunningGrace {
			inf.Incomplete = append(inf.Incomplete, id)
			continue
		}
		rb := RunningBackup{ID: id, Heartbeat: a.ModTime}
		if rec, err := r.readAlive(ctx, id); err == nil {
			rb.Host, rb.PID, rb.Started, rb.BytesDone, rb.BytesTotal = rec.Host, rec.PID, rec.Started, rec.BytesDone, rec.BytesTotal
			if d := rec.Time.Sub(rec.Started).Seconds(); !rec.Started.IsZero() && d > 0 {
				rb.Rate = float64(rec.BytesDone) / d
			}
		} else if !errors.Is(err, storage.ErrNotFound) {
			return nil, err
		}
		inf.Running = append(inf.Running, rb)
	}
	return inf, nil
}

// recoveryWindow is what restore can reach along timeline tli: from the
// oldest usable backup's end to the end of the WAL archived without a gap
// from the newest usable backup's start. A backup is usable when it is on
// tli's history and its own WAL (start to stop segment) is archived.
func recoveryWindow(backups []BackupInfo, tli uint32, hist []pg.TimelineSwitch, segs map[string]storage.ObjectInfo, seg int64) *RecoveryWindow {
	per := uint64(pg.SegmentsPerLog(seg))
	name := func(n uint64) string {
		return pg.SegmentName(pg.TimelineForSegment(tli, hist, n, seg), uint32(n/per), uint32(n%per))
	}
	usable := func(b Summary) (uint64, uint64, bool) {
		start, err1 := pg.ParseWALFileName(b.StartWAL)
		stop, err2 := pg.ParseWALFileName(b.StopWAL)
		if err1 != nil || err2 != nil || b.SegmentSize != seg {
			return 0, 0, false
		}
		s, e := start.SegNo(seg), stop.SegNo(seg)
		if e < s || e-s > uint64(len(segs)) {
			return 0, 0, false
		}
		for n := s; n <= e; n++ {
			if _, ok := segs[name(n)]; !ok {
				return 0, 0, false
			}
		}
		return s, e, true
	}
	var first, last *BackupInfo
	var lastStop uint64
	for i := range backups {
		if !backups[i].OnRecoveryPath {
			continue
		}
		if _, e, ok := usable(backups[i].Summary); ok {
			if first == nil {
				first = &backups[i]
			}
			last, lastStop = &backups[i], e
		}
	}
	if first == nil {
		return nil
	}
	end := lastStop
	for i := 0; i < len(segs); i++ { // bounded: every step finds a listed segment
		if _, ok := segs[name(end+1)]; !ok {
			break
		}
		end++
	}
	endName := name(end)
	return &RecoveryWindow{
		Timeline: tli, FirstBackup: first.ID, FirstLSN: first.StopLSN, FirstTime: first.StopTime,
		LastBackup: last.ID, LastWAL: endName, LastLSN: pg.LSN((end + 1) * uint64(seg)).String(),
		LastTime: segs[endName].ModTime,
	}
}

// readAlive reads a running backup's heartbeat record.
func (r *Repository) readAlive(ctx context.Context, id string) (AliveRecord, error) {
	var rec AliveRecord
	rc, err := r.backend.Get(ctx, aliveName(id))
	if err != nil {
		return rec, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, 1<<16))
	if err != nil {
		return rec, fmt.Errorf("backup %s: heartbeat: %w", id, err)
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		return AliveRecord{}, nil // a heartbeat is a sign of life whatever it says
	}
	return rec, nil
}

func contains(sorted []string, s string) bool {
	i := sort.SearchStrings(sorted, s)
	return i < len(sorted) && sorted[i] == s
}

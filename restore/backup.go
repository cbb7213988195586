package restore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pgkeep/pgkeep/internal/fsync"
	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/storage"
)

// Progress receives a restore's progress (bytes written).
type Progress interface {
	Start(total int64)
	Add(n int64)
	Finish()
}

// BackupOptions configures a restore of a base backup.
type BackupOptions struct {
	PGData   string
	BackupID string // "" or "latest": chosen from the target
	Target   Target
	// Standby writes standby.signal instead of recovery.signal.
	Standby bool
	// RetryInterval, with Standby, is written as wal_retrieve_retry_interval
	// (0: PostgreSQL's 5 s) unless the backup's postgresql.auto.conf sets
	// it: how soon a standby whose first attempt to stream failed tries
	// again (see docs/patroni.md, "The first seconds of a new replica").
	RetryInterval time.Duration
	// Delta keeps files whose size and checksum match the backup.
	Delta bool
	// Force empties a non-empty data directory first.
	Force bool
	// RestoreCommand is written as restore_command.
	RestoreCommand string
	// ArchiveModeOff writes archive_mode = off (pgkeep restore
	// --archive-mode off): a test copy that is promoted must never push its
	// new timeline into the repository it came from.
	ArchiveModeOff bool
	// NoRecoveryConfig writes backup_label and tablespace_map but no
	// recovery settings and no signal file: for Patroni's bootstrap, which
	// writes its own recovery_conf (settings left in postgresql.auto.conf
	// would outlive the bootstrap and override Patroni's).
	NoRecoveryConfig bool
	// TablespaceMap relocates tablespaces: OID -> new directory.
	TablespaceMap map[string]string
	// Timeline is the timeline recovery will follow, when the caller knows
	// it (create-replica: the leader's); 0 means the recovery target
	// timeline (a number, or for latest the newest archived). Only a backup
	// on its history can be chosen: PostgreSQL refuses any other.
	Timeline uint32
	// Workers download and write in parallel (0 = 4).
	Workers int
	// WALPrefetchBytes bounds the WAL downloaded into the prefetch
	// directory while the base files are written (restore.wal_prefetch_bytes),
	// WALWorkers at a time; 0 downloads none.
	WALPrefetchBytes int64
	WALWorkers       int
	Progress         Progress
	Logger           *slog.Logger
}

// BackupResult says what a restore did.
type BackupResult struct {
	BackupID        string
	FilesWritten    int
	FilesKept       int
	FilesRemoved    int
	BytesWritten    int64
	BytesDownloaded int64
	// WAL is what the bulk WAL download left in the prefetch directory.
	WAL BulkWALResult
}

// ErrPostmasterRunning means the target directory belongs to a live server.
var ErrPostmasterRunning = errors.New("a postmaster is running in the data directory; stop it first")

// Backup restores a base backup into o.PGData and writes the recovery
// configuration; everything is on disk (fsynced) when it returns nil.
func Backup(ctx context.Context, r *repo.Repository, o BackupOptions) (BackupResult, error) {
	var res BackupResult
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.Workers <= 0 {
		o.Workers = 4
	}
	if err := o.Target.Validate(); err != nil {
		return res, err
	}
	if o.PGData == "" || !filepath.IsAbs(o.PGData) {
		return res, fmt.Errorf("restore: --pgdata must be an absolute path (got %q)", o.PGData)
	}
	running := pg.RunningClusters()
	if err := checkTargetDir(o.PGData, o.Delta || o.Force, running); err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	backups, _, err := r.ListBackups(ctx)
	if err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	backups, tli, history, err := onRecoveryPath(ctx, r, backups, o, log)
	if err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	sum, err := ChooseBackup(backups, o.BackupID, &o.Target)
	if errors.Is(err, ErrBeforeWindow) {
		if inf, ierr := r.Info(ctx, time.Now()); ierr == nil && inf.RecoveryWindow != nil {
			err = fmt.Errorf("%w; the recovery window is %s", err, inf.RecoveryWindow)
		}
	}
	if err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	m, err := r.ReadManifest(ctx, sum.ID)
	if err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	res.BackupID = m.ID
	if tli == 0 { // recovery_target_timeline = current: the backup's own
		tli = sum.Timeline
		if history, err = r.TimelineHistory(ctx, tli); err != nil {
			return res, fmt.Errorf("restore: timeline %d: %w", tli, err)
		}
	}
	if err := checkTablespaceLocations(m, o.TablespaceMap, running); err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	if err := checkBackupWAL(ctx, r, m); err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	warnTargetPastArchive(ctx, r, o.Target, log)
	log.Info("restoring", "backup", m.ID, "pgdata", o.PGData, "stop_time", m.StopTime, "stop_lsn", m.StopLSN, "delta", o.Delta)

	if o.Force && !o.Delta {
		if err := emptyDir(o.PGData); err != nil {
			return res, fmt.Errorf("restore: empty %s: %w", o.PGData, err)
		}
	}
	if err := os.MkdirAll(o.PGData, 0o700); err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	os.Chmod(o.PGData, 0o700)
	tbl, err := prepareTablespaces(o.PGData, m, o.TablespaceMap, o.Delta || o.Force, running)
	if err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}

	// pg_control is made visible last (written under another name, renamed
	// after everything else is on disk): a restore interrupted at any point
	// leaves a directory PostgreSQL refuses to start, never one it would
	// take for a crashed cluster and "recover". A delta restore drops the
	// old one first for the same reason.
	if !slices.ContainsFunc(m.Files, func(f repo.File) bool { return f.Path == controlFile }) {
		return res, fmt.Errorf("restore: backup %s has no %s", m.ID, controlFile)
	}
	if err := removeSynced(filepath.Join(o.PGData, filepath.FromSlash(controlFile))); err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}

	// Decide which files to write; with --delta keep the ones that match.
	want := map[string]bool{}
	var todo []*repo.File
	var total int64
	for i := range m.Files {
		f := &m.Files[i]
		want[f.Path] = true
		if o.Delta {
			if sum, size, err := repo.FileChecksum(filepath.Join(o.PGData, filepath.FromSlash(f.Path)), m.BlockSize); err == nil && size == f.Size && sum == f.SHA256 {
				res.FilesKept++
				continue
			}
		}
		if f.Path == controlFile {
			tmp := *f
			tmp.Path = controlTemp
			f = &tmp
		}
		todo = append(todo, f)
		total += f.Size
	}
	if o.Delta {
		n, err := removeExtras(o.PGData, m, want)
		if err != nil {
			return res, fmt.Errorf("restore: %w", err)
		}
		res.FilesRemoved = n
	}
	for _, d := range m.Dirs {
		if _, isTbl := tbl[d.Path]; isTbl {
			continue
		}
		if err := os.MkdirAll(filepath.Join(o.PGData, filepath.FromSlash(d.Path)), fs.FileMode(d.Mode)|0o700); err != nil {
			return res, fmt.Errorf("restore: %w", err)
		}
	}
	for _, f := range todo {
		p := filepath.Join(o.PGData, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return res, fmt.Errorf("restore: %w", err)
		}
		fh, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, fs.FileMode(f.Mode)|0o600)
		if err == nil {
			err = fh.Truncate(f.Size)
			fh.Close()
		}
		if err != nil {
			return res, fmt.Errorf("restore: create %s: %w", f.Path, err)
		}
	}
	// The WAL recovery will read is downloaded while the base files are
	// written, so recovery finds it local from its first request.
	bulkCtx, stopBulk := context.WithCancel(ctx)
	defer stopBulk()
	type bulkOutcome struct {
		res BulkWALResult
		err error
	}
	bulkDone := make(chan bulkOutcome, 1)
	if o.WALPrefetchBytes >= m.SegmentSize && pg.ValidSegmentSize(m.SegmentSize) && !o.NoRecoveryConfig {
		go func() {
			wal, err := bulkWAL(bulkCtx, r, m, o, tli, history, log)
			bulkDone <- bulkOutcome{wal, err}
		}()
	} else {
		bulkDone <- bulkOutcome{}
	}
	if o.Progress != nil {
		o.Progress.Start(total)
	}
	dl, written, err := fetchBlocks(ctx, r, m, todo, o.PGData, o.Workers, o.Progress)
	if o.Progress != nil {
		o.Progress.Finish()
	}
	res.BytesDownloaded, res.BytesWritten = dl, written
	res.FilesWritten = len(todo)
	if err != nil {
		stopBulk()
		<-bulkDone
		return res, fmt.Errorf("restore: %w", err)
	}
	bulk := <-bulkDone
	res.WAL = bulk.res
	if bulk.err != nil {
		return res, fmt.Errorf("restore: %w", bulk.err)
	}
	if err := writeRecoveryFiles(o, m, tbl); err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	if err := syncAll(o.PGData, tbl); err != nil {
		return res, fmt.Errorf("restore: fsync: %w", err)
	}
	if err := publishControlFile(o.PGData); err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	log.Info("restore complete", "backup", m.ID, "files_written", res.FilesWritten, "files_kept", res.FilesKept,
		"files_removed", res.FilesRemoved, "bytes_downloaded", res.BytesDownloaded,
		"wal_segments_local", res.WAL.Segments, "wal_complete", res.WAL.Complete)
	return res, nil
}

// onRecoveryPath keeps the backups recovery can start from when it follows
// the timeline it will follow: one on an abandoned timeline (after a
// cluster rollback) would make PostgreSQL refuse to start ("requested
// timeline is not a child of this server's history").
//
// It also returns the timeline recovery follows and its history (0 and nil
// for recovery_target_timeline = current: the chosen backup's).
func onRecoveryPath(ctx context.Context, r *repo.Repository, backups []repo.Summary, o BackupOptions, log *slog.Logger) ([]repo.Summary, uint32, []pg.TimelineSwitch, error) {
	tli := o.Timeline
	switch tl := o.Target.Timeline; {
	case tli != 0:
	case tl == "current":
		return backups, 0, nil, nil
	case tl == "" || tl == "latest":
		newest, err := r.NewestTimeline(ctx)
		if err != nil {
			return nil, 0, nil, err
		}
		tli = newest
		for _, b := range backups {
			tli = max(tli, b.Timeline) // its history file may not be archived
		}
	default:
		n, err := strconv.ParseUint(tl, 0, 32)
		if err != nil || n == 0 {
			return nil, 0, nil, fmt.Errorf("recovery target timeline %q: use latest, current or a timeline number", tl)
		}
		tli = uint32(n)
	}
	history, err := r.TimelineHistory(ctx, tli)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("timeline %d: %w", tli, err)
	}
	var out []repo.Summary
	for _, b := range backups {
		if repo.OnTimelinePath(b, tli, history) {
			out = append(out, b)
		} else if b.ID == o.BackupID {
			return nil, 0, nil, fmt.Errorf("backup %s (timeline %d, consistent at %s) is not on the history of timeline %d that recovery follows; choose another backup or --target-timeline", b.ID, b.Timeline, b.StopLSN, tli)
		}
	}
	if len(out) < len(backups) {
		log.Info("skipping backups not on the recovery timeline's history", "timeline", tli, "skipped", len(backups)-len(out))
	}
	if len(out) == 0 && len(backups) > 0 {
		return nil, 0, nil, fmt.Errorf("none of the %d backups is on the history of timeline %d that recovery follows (the newest is on timeline %d)", len(backups), tli, backups[len(backups)-1].Timeline)
	}
	return out, tli, history, nil
}

// bulkWAL plans and runs the restore's WAL download into the prefetch
// directory PostgreSQL's wal-fetch will look in. Only the segments the
// budget allows are planned, so the directory never holds more.
func bulkWAL(ctx context.Context, r *repo.Repository, m *repo.Manifest, o BackupOptions, tli uint32, history []pg.TimelineSwitch, log *slog.Logger) (BulkWALResult, error) {
	var stop pg.LSN
	switch {
	case o.Target.Immediate:
		stop, _ = pg.ParseLSN(m.StopLSN)
	case o.Target.LSN != "":
		stop = o.Target.lsn
	}
	plan, err := PlanBulkWAL(ctx, r, m, tli, history, stop, int(o.WALPrefetchBytes/m.SegmentSize))
	if err != nil {
		if ctx.Err() != nil {
			return BulkWALResult{}, err
		}
		// Recovery fetches it all itself then: slower, not wrong.
		log.Warn("could not plan the bulk WAL download; recovery fetches WAL as it goes", "err", err)
		return BulkWALResult{}, nil
	}
	dir := DefaultPrefetchDir(filepath.Join(o.PGData, "pg_wal", RecoveryFileName))
	return BulkWAL(ctx, r, plan, BulkWALOptions{Dir: dir, Concurrency: o.WALWorkers, Logger: log})
}

// warnTargetPastArchive warns when a target time lies after the moment
// the newest archived segment reached the repository: PostgreSQL will run
// out of WAL before reaching it, and refuses to promote there.
func warnTargetPastArchive(ctx context.Context, r *repo.Repository, t Target, log *slog.Logger) {
	if t.Time == "" || t.time.IsZero() {
		return
	}
	seg, at, ok, err := r.NewestWAL(ctx)
	if err != nil || !ok {
		return
	}
	if t.time.After(at) {
		log.Warn("the target time is after the newest archived WAL reached the repository; recovery will likely end before the target and PostgreSQL will stop with 'recovery ended before configured recovery target was reached'",
			"target_time", t.time.UTC(), "newest_segment", seg.Name, "archived_at", at.UTC())
	}
}

const (
	controlFile = "global/pg_control"
	controlTemp = "global/pg_control.pgkeep-restore"
)

// removeSynced removes a file, if present, durably.
func removeSynced(p string) error {
	if err := os.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	return fsync.Dir(filepath.Dir(p))
}

// publishControlFile renames the restored pg_control into place: the last
// step of a restore.
func publishControlFile(pgdata string) error {
	final := filepath.Join(pgdata, filepath.FromSlash(controlFile))
	if err := os.Rename(filepath.Join(pgdata, filepath.FromSlash(controlTemp)), final); err != nil {
		return err
	}
	return fsync.Dir(filepath.Dir(final))
}

// checkBackupWAL makes sure the WAL that makes the backup consistent is
// archived before anything is written: without it the restore is useless.
func checkBackupWAL(ctx context.Context, r *repo.Repository, m *repo.Manifest) error {
	first, err := pg.ParseWALFileName(m.StartWAL)
	if err != nil {
		return fmt.Errorf("backup %s: %w", m.ID, err)
	}
	last, err := pg.ParseWALFileName(m.StopWAL)
	if err != nil {
		return fmt.Errorf("backup %s: %w", m.ID, err)
	}
	for seg := first; seg.SegNo(m.SegmentSize) <= last.SegNo(m.SegmentSize); seg = seg.NextSegment(m.SegmentSize) {
		if _, err := r.Backend.Stat(ctx, repo.WALObjectName(seg)); err != nil {
			if errors.Is(err, storage.ErrNotFound) {
				return fmt.Errorf("WAL segment %s, needed to make backup %s consistent, is missing from the archive", seg.Name, m.ID)
			}
			return fmt.Errorf("check WAL segment %s: %w", seg.Name, err)
		}
	}
	return nil
}

// ErrLocationInUse means a directory restore would write to belongs to a
// running cluster (its data directory or one of its tablespaces).
var ErrLocationInUse = errors.New("is in use by a running cluster; refusing to write there whatever the flags")

// checkTargetDir refuses a live postmaster and a directory a running
// cluster writes to always, and a non-empty directory unless allowed.
func checkTargetDir(dir string, allowNonEmpty bool, running []pg.RunningCluster) error {
	if pid := pg.PostmasterPID(dir); pid > 0 {
		return fmt.Errorf("%s: %w (pid %d)", dir, ErrPostmasterRunning, pid)
	}
	if c, used, ok := pg.UsedBy(dir, running); ok {
		return fmt.Errorf("%s overlaps %s, which %w (postmaster pid %d, data directory %s)", dir, used, ErrLocationInUse, c.PID, c.DataDir)
	}
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(entries) > 0 && !allowNonEmpty {
		return fmt.Errorf("%s is not empty; use --delta to reuse matching files or --force to overwrite it", dir)
	}
	return nil
}

func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// prepareTablespaces creates each tablespace directory (relocated if asked)
// and the pg_tblspc symlink to it. It returns pg_tblspc/<oid> -> location.
func prepareTablespaces(pgdata string, m *repo.Manifest, remap map[string]string, allowNonEmpty bool, running []pg.RunningCluster) (map[string]string, error) {
	out := map[string]string{}
	for oid := range remap {
		found := false
		for _, t := range m.Tablespaces {
			found = found || t.OID == oid
		}
		if !found {
			return nil, fmt.Errorf("--tablespace-map: the backup has no tablespace with OID %s", oid)
		}
	}
	for _, t := range m.Tablespaces {
		loc := t.Location
		if v, ok := remap[t.OID]; ok {
			loc = v
		}
		if err := checkTablespaceLocation(t.OID, loc, running); err != nil {
			return nil, err
		}
		if entries, err := os.ReadDir(loc); err == nil && len(entries) > 0 && !allowNonEmpty {
			return nil, fmt.Errorf("tablespace %s directory %s is not empty (use --tablespace-map %s=DIR, --delta or --force)", t.OID, loc, t.OID)
		}
		if err := os.MkdirAll(loc, 0o700); err != nil {
			return nil, err
		}
		link := filepath.Join(pgdata, "pg_tblspc", t.OID)
		if err := os.MkdirAll(filepath.Dir(link), 0o700); err != nil {
			return nil, err
		}
		if cur, err := os.Readlink(link); err != nil || cur != loc {
			os.RemoveAll(link)
			if err := os.Symlink(loc, link); err != nil {
				return nil, err
			}
		}
		out["pg_tblspc/"+t.OID] = loc
	}
	return out, nil
}

// checkTablespaceLocations checks, before anything is written, every
// directory the backup's tablespaces would be restored to.
func checkTablespaceLocations(m *repo.Manifest, remap map[string]string, running []pg.RunningCluster) error {
	for _, t := range m.Tablespaces {
		loc := t.Location
		if v, ok := remap[t.OID]; ok {
			loc = v
		}
		if err := checkTablespaceLocation(t.OID, loc, running); err != nil {
			return err
		}
	}
	return nil
}

func checkTablespaceLocation(oid, loc string, running []pg.RunningCluster) error {
	if !filepath.IsAbs(loc) {
		return fmt.Errorf("tablespace %s: location %q is not absolute", oid, loc)
	}
	if c, used, ok := pg.UsedBy(loc, running); ok {
		return fmt.Errorf("tablespace %s: location %s overlaps %s, which %w (postmaster pid %d, data directory %s); restore it elsewhere with --tablespace-map %s=DIR",
			oid, loc, used, ErrLocationInUse, c.PID, c.DataDir, oid)
	}
	return nil
}

// removeExtras deletes files a delta restore must not keep: anything the
// backup does not have, and all of pg_wal (stale WAL of another history).
func removeExtras(pgdata string, m *repo.Manifest, want map[string]bool) (int, error) {
	dirs := map[string]bool{}
	for _, d := range m.Dirs {
		dirs[d.Path] = true
	}
	n := 0
	err := filepath.WalkDir(pgdata, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(pgdata, p)
		rel = filepath.ToSlash(rel)
		if rel == "." {
			return nil
		}
		if d.Type()&fs.ModeSymlink != 0 {
			if path.Dir(rel) == "pg_tblspc" && dirs[rel] {
				return nil // walked through its own root below
			}
			n++
			return os.Remove(p)
		}
		if d.IsDir() {
			if !dirs[rel] {
				n++
				if err := os.RemoveAll(p); err != nil {
					return err
				}
				return filepath.SkipDir
			}
			return nil
		}
		if !want[rel] {
			n++
			return os.Remove(p)
		}
		return nil
	})
	if err != nil {
		return n, err
	}
	for _, t := range m.Tablespaces {
		root := filepath.Join(pgdata, "pg_tblspc", t.OID)
		filepath.WalkDir(root+"/", func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			rel, _ := filepath.Rel(pgdata, p)
			if !want[filepath.ToSlash(rel)] {
				n++
				os.Remove(p)
			}
			return nil
		})
	}
	return n, nil
}

// jobPlainSize bounds the restored bytes of one download job.
const jobPlainSize = 32 << 20

// writeChunk is the size of each write into a restored file. One 4 MiB
// write makes the kernel put it in large page-cache folios, and on a VM
// whose host has reclaimed free memory (free page reporting) every large
// folio's first touch faults into the host: measured, whole-block writes
// spent 2-3x the kernel time of 256 KiB writes, and restore ran at half
// pgBackRest's speed in bench/backup.sh instead of 1.5x it.
const writeChunk = 256 << 10

// writeChunked writes p at off in writeChunk pieces.
func writeChunked(f *os.File, p []byte, off int64) error {
	for i := 0; i < len(p); i += writeChunk {
		if _, err := f.WriteAt(p[i:min(i+writeChunk, len(p))], off+int64(i)); err != nil {
			return err
		}
	}
	return nil
}

type fileBlock struct {
	file *repo.File
	ref  repo.BlockRef
}

// fetchBlocks downloads the blocks of files, pack by pack: a whole pack in
// one request when all of it is needed, else ranges of adjacent blocks.
func fetchBlocks(ctx context.Context, r *repo.Repository, m *repo.Manifest, files []*repo.File, pgdata string, workers int, prog Progress) (int64, int64, error) {
	byPack := map[int][]fileBlock{}
	for _, f := range files {
		for _, b := range f.Blocks {
			byPack[b.Pack] = append(byPack[b.Pack], fileBlock{f, b})
		}
	}
	type job struct {
		pack   int
		blocks []fileBlock
	}
	var jobs []job
	for p, bl := range byPack {
		if p < 0 || p >= len(m.Packs) {
			return 0, 0, fmt.Errorf("manifest names pack %d of %d", p, len(m.Packs))
		}
		sort.Slice(bl, func(i, j int) bool { return bl[i].ref.Offset < bl[j].ref.Offset })
		// Split into runs of adjacent blocks (gaps under 1 MiB are read
		// through), and runs into jobs of at most jobPlainSize restored
		// bytes: a pack of well-compressed data holds a GiB or more, and
		// one job per pack would leave the other workers idle.
		start, plain := 0, int64(0)
		for i := 1; i <= len(bl); i++ {
			plain += bl[i-1].ref.Size
			if i == len(bl) || bl[i].ref.Offset-(bl[i-1].ref.Offset+bl[i-1].ref.Length) > 1<<20 || plain >= jobPlainSize {
				jobs = append(jobs, job{p, bl[start:i]})
				start, plain = i, 0
			}
		}
	}
	sort.Slice(jobs, func(i, j int) bool {
		if jobs[i].pack != jobs[j].pack {
			return jobs[i].pack < jobs[j].pack
		}
		return jobs[i].blocks[0].ref.Offset < jobs[j].blocks[0].ref.Offset
	})
	lanes := newLanes(len(jobs), func(i int) string { return jobs[i].blocks[0].file.Path })
	var downloaded, written atomic.Int64
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lane := ""
			for ctx.Err() == nil {
				i, ok := lanes.next(&lane)
				if !ok {
					return
				}
				j := jobs[i]
				pack := m.Packs[j.pack]
				first := j.blocks[0].ref.Offset
				last := j.blocks[len(j.blocks)-1].ref
				length := last.Offset + last.Length - first
				err := fetchRun(ctx, r, pack.Name, first, length, pack.Size, j.blocks, pgdata, &downloaded, &written, prog)
				lanes.done(lane)
				if err != nil {
					cancel(err)
				}
			}
		}()
	}
	wg.Wait()
	return downloaded.Load(), written.Load(), context.Cause(ctx)
}

// lanes hands out restore jobs so that workers write different files
// while they can. Buffered writes to one file serialize on its inode lock,
// and a worker waiting for it spins: with two workers on one 1 GiB file,
// perf showed 17 % of restore's CPU in rwsem_spin_on_owner. A worker keeps
// to its file (its lane) in job order; when that is done it takes the
// first file in job order that has jobs left and nobody writes, and only
// shares a file when no other is left. Each call costs about the number of
// workers, not of files.
type lanes struct {
	mu     sync.Mutex
	queue  map[string][]int // file -> its jobs, in job order
	order  []string         // files by first job; order[:cursor] are done
	cursor int
	active map[string]int // file -> workers writing it
}

func newLanes(n int, file func(int) string) *lanes {
	l := &lanes{queue: map[string][]int{}, active: map[string]int{}}
	for i := range n {
		f := file(i)
		if _, ok := l.queue[f]; !ok {
			l.order = append(l.order, f)
		}
		l.queue[f] = append(l.queue[f], i)
	}
	return l
}

// next returns the next job for a worker whose lane is *lane, updating it.
func (l *lanes) next(lane *string) (int, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	pick := ""
	if len(l.queue[*lane]) > 0 && l.active[*lane] == 0 {
		pick = *lane
	} else {
		for l.cursor < len(l.order) && len(l.queue[l.order[l.cursor]]) == 0 {
			l.cursor++
		}
		shared := ""
		for _, f := range l.order[l.cursor:] {
			if len(l.queue[f]) == 0 {
				continue
			}
			if shared == "" {
				shared = f
			}
			if l.active[f] == 0 {
				pick = f
				break
			}
		}
		if pick == "" {
			pick = shared
		}
	}
	if pick == "" {
		return 0, false
	}
	i := l.queue[pick][0]
	l.queue[pick] = l.queue[pick][1:]
	l.active[pick]++
	*lane = pick
	return i, true
}

// done marks the worker's current job on lane finished.
func (l *lanes) done(lane string) {
	l.mu.Lock()
	l.active[lane]--
	l.mu.Unlock()
}

func fetchRun(ctx context.Context, r *repo.Repository, packName string, first, length, packSize int64, blocks []fileBlock,
	pgdata string, downloaded, written *atomic.Int64, prog Progress) error {
	var rc io.ReadCloser
	var err error
	if first == 0 && length == packSize {
		rc, err = r.Backend.Get(ctx, packName)
	} else {
		rc, err = r.Backend.GetRange(ctx, packName, first, length)
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", packName, err)
	}
	defer rc.Close()
	br := bufio.NewReaderSize(rc, 1<<20)
	pos := first
	var buf, plainBuf []byte
	// Blocks of one file are mostly adjacent in a pack: keep its file
	// open across them instead of an open and close per block.
	var (
		open     *os.File
		openPath string
	)
	closeOpen := func() error {
		if open == nil {
			return nil
		}
		err := open.Close()
		open = nil
		if err != nil {
			return fmt.Errorf("write %s: %w", openPath, err)
		}
		return nil
	}
	defer closeOpen()
	for _, b := range blocks {
		if skip := b.ref.Offset - pos; skip > 0 {
			if _, err := io.CopyN(io.Discard, br, skip); err != nil {
				return fmt.Errorf("read %s: %w: %v", packName, repo.ErrCorrupt, err)
			}
			downloaded.Add(skip)
		}
		if int64(cap(buf)) < b.ref.Length {
			buf = make([]byte, b.ref.Length)
		}
		buf = buf[:b.ref.Length]
		if _, err := io.ReadFull(br, buf); err != nil {
			return fmt.Errorf("%s: block at %d of %s: %w: %v", b.file.Path, b.ref.FileOffset, packName, repo.ErrCorrupt, err)
		}
		downloaded.Add(b.ref.Length)
		pos = b.ref.Offset + b.ref.Length
		// Trust the zstd frames' own checksums (verify re-checks SHA-256);
		// decode into one buffer reused across the run's blocks.
		plain, _, err := r.Codec().DecodeBlockTo(plainBuf, buf, false)
		if err != nil {
			return fmt.Errorf("%s: block at %d (%s): %w", b.file.Path, b.ref.FileOffset, packName, err)
		}
		if int64(len(plain)) != b.ref.Size {
			return fmt.Errorf("%s: block at %d (%s): %w: size %d, manifest says %d", b.file.Path, b.ref.FileOffset, packName, repo.ErrCorrupt, len(plain), b.ref.Size)
		}
		if open == nil || openPath != b.file.Path {
			if err := closeOpen(); err != nil {
				return err
			}
			f, err := os.OpenFile(filepath.Join(pgdata, filepath.FromSlash(b.file.Path)), os.O_WRONLY, 0)
			if err != nil {
				return fmt.Errorf("write %s: %w", b.file.Path, err)
			}
			open, openPath = f, b.file.Path
		}
		if err := writeChunked(open, plain, b.ref.FileOffset); err != nil {
			return fmt.Errorf("write %s: %w", b.file.Path, err)
		}
		plainBuf = plain[:0]
		// Start writeback now, so the final syncfs does not wait for the
		// whole restore's dirty pages at once (PostgreSQL's *_flush_after
		// does the same); advisory: errors show at syncfs.
		unix.SyncFileRange(int(open.Fd()), b.ref.FileOffset, int64(len(plain)), unix.SYNC_FILE_RANGE_WRITE)
		written.Add(int64(len(plain)))
		if prog != nil {
			prog.Add(int64(len(plain)))
		}
	}
	return closeOpen()
}

// quoteConf quotes a value for postgresql.conf. PostgreSQL's config lexer
// (guc-file.l) reads a quoted string as
//
//	'([^'\\\n]|\\.|'')*'
//
// and then takes \b \f \n \r \t, octal and backslash-anything escapes, so
// a backslash, a quote and a line break must be escaped or the line means
// something else, or nothing.
func quoteConf(v string) string {
	return "'" + confQuoter.Replace(v) + "'"
}

var confQuoter = strings.NewReplacer(`\`, `\\`, "'", "''", "\n", `\n`, "\r", `\r`)

// recoveryConfLines are the postgresql.auto.conf lines for a restore.
func recoveryConfLines(restoreCommand string, t Target) []string {
	var lines []string
	if restoreCommand != "" {
		lines = append(lines, "restore_command = "+quoteConf(restoreCommand))
	}
	for _, kv := range t.Settings() {
		lines = append(lines, kv[0]+" = "+quoteConf(kv[1]))
	}
	return lines
}

// writeRecoveryFiles writes backup_label, tablespace_map, the recovery
// settings and the signal file.
func writeRecoveryFiles(o BackupOptions, m *repo.Manifest, tbl map[string]string) error {
	if err := writeFileSync(filepath.Join(o.PGData, "backup_label"), []byte(m.BackupLabel), 0o600); err != nil {
		return err
	}
	os.Remove(filepath.Join(o.PGData, "tablespace_map"))
	if len(m.Tablespaces) > 0 {
		// PostgreSQL recreates the symlinks from this file: give it the
		// (possibly relocated) directories restore used.
		var b strings.Builder
		for _, t := range m.Tablespaces {
			fmt.Fprintf(&b, "%s %s\n", t.OID, tbl["pg_tblspc/"+t.OID])
		}
		if err := writeFileSync(filepath.Join(o.PGData, "tablespace_map"), []byte(b.String()), 0o600); err != nil {
			return err
		}
	}
	if o.NoRecoveryConfig {
		os.Remove(filepath.Join(o.PGData, "recovery.signal"))
		os.Remove(filepath.Join(o.PGData, "standby.signal"))
		return nil
	}
	autoConf := filepath.Join(o.PGData, "postgresql.auto.conf")
	old, _ := os.ReadFile(autoConf)
	var kept []string
	userRetry := false
	for _, line := range strings.Split(string(old), "\n") {
		key := strings.TrimSpace(line)
		if strings.HasPrefix(key, "restore_command") || strings.HasPrefix(key, "recovery_target") || strings.HasPrefix(key, "# pgkeep restore") ||
			(o.ArchiveModeOff && strings.HasPrefix(key, "archive_mode")) {
			continue
		}
		if strings.HasPrefix(key, "wal_retrieve_retry_interval") {
			userRetry = true
		}
		kept = append(kept, line)
	}
	conf := strings.TrimRight(strings.Join(kept, "\n"), "\n") + "\n"
	conf += fmt.Sprintf("# pgkeep restore of backup %s at %s\n", m.ID, time.Now().UTC().Format(time.RFC3339))
	for _, l := range recoveryConfLines(o.RestoreCommand, o.Target) {
		conf += l + "\n"
	}
	if o.ArchiveModeOff {
		// postgresql.auto.conf is read after postgresql.conf: this wins.
		conf += "archive_mode = 'off'\n"
	}
	if o.Standby && o.RetryInterval > 0 && !userRetry {
		conf += fmt.Sprintf("wal_retrieve_retry_interval = '%dms'\n", o.RetryInterval.Milliseconds())
	}
	if err := writeFileSync(autoConf, []byte(conf), 0o600); err != nil {
		return err
	}
	signal, other := "recovery.signal", "standby.signal"
	if o.Standby {
		signal, other = other, signal
	}
	os.Remove(filepath.Join(o.PGData, other))
	return writeFileSync(filepath.Join(o.PGData, signal), nil, 0o600)
}

func writeFileSync(p string, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// syncAll flushes the data directory's and tablespaces' filesystems:
// syncfs(2) once per filesystem is much faster than fsync per file.
func syncAll(pgdata string, tbl map[string]string) error {
	roots := []string{pgdata}
	for _, loc := range tbl {
		roots = append(roots, loc)
	}
	for _, root := range roots {
		f, err := os.Open(root)
		if err != nil {
			return err
		}
		err = unix.Syncfs(int(f.Fd()))
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

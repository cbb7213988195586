package archive

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
)

// BackupOptions configures a base backup.
type BackupOptions struct {
	// DSN connects to the cluster to back up ("" = libpq PG* variables).
	DSN string
	// PGData is the data directory; it must be the server's own (the backup
	// reads files directly). "" means the server's data_directory.
	PGData string
	// FastCheckpoint asks PostgreSQL for an immediate checkpoint at start.
	FastCheckpoint bool
	// ChecksumWarnOnly downgrades a page checksum failure to a warning.
	ChecksumWarnOnly bool
	// Workers read, check and compress blocks (0 = 2).
	Workers int
	// Writers upload packs in parallel (0 = 2).
	Writers int
	// BlockSize is the plain size of one block (0 = 4 MiB); PackSize the
	// size at which a pack is closed (0 = 64 MiB).
	BlockSize int64
	PackSize  int64
	// wholeBlocks stores every file in blocks of BlockSize, listed in the
	// manifest, as pgkeep did before formats 3 and 4 (tests write such
	// references with it).
	wholeBlocks bool
	// WALTimeout bounds the wait for the backup's WAL to be archived.
	WALTimeout time.Duration
	// Schedule, when set, is the daemon job's scheduled time this backup
	// is for: the summary carries it and the commit claims the time in the
	// repository, so at most one backup is committed per scheduled time
	// (an error wrapping repo.ErrScheduleTaken otherwise, and this
	// backup's objects are removed again).
	Schedule *repo.Schedule
	// Progress, if set, is told the total bytes to read once and then the
	// bytes read so far, from several goroutines.
	Progress Progress
	// Annotations are stored in the backup's summary (repo.ValidateAnnotations).
	Annotations map[string]string
	// Type is full, incr or checksum ("" = incr when a committed backup of
	// this system exists to reference, else full).
	Type string
	// Reference is the backup an incremental reuses blocks of ("" = the
	// newest committed backup of this system).
	Reference string
	Logger    *slog.Logger
}

// Progress receives a backup's or restore's progress.
type Progress interface {
	Start(total int64)
	Add(n int64)
	Finish()
}

// ErrChecksum means a data page failed its checksum.
var ErrChecksum = errors.New("data page checksum mismatch")

// withDefaults fills in the zero options.
func (o BackupOptions) withDefaults() BackupOptions {
	if o.Workers <= 0 {
		o.Workers = 2
	}
	if o.Writers <= 0 {
		o.Writers = 2
	}
	if o.BlockSize <= 0 {
		o.BlockSize = 4 << 20
	}
	o.BlockSize = (o.BlockSize + pg.BlockSize - 1) / pg.BlockSize * pg.BlockSize
	if o.PackSize <= 0 {
		o.PackSize = 64 << 20
	}
	if o.WALTimeout <= 0 {
		o.WALTimeout = 5 * time.Minute
	}
	return o
}

// Backup takes a full online base backup of the local cluster into r and
// returns its manifest once it is committed.
//
// The stages: the server's side (startstop.go: pg_backup_start, then
// pg_backup_stop and the backup_label), the repository's side
// (writeBackup: the file pipeline of pipeline.go, then the commit) and
// between the two the wait for the backup's WAL (walwait.go).
func Backup(ctx context.Context, r *repo.Repository, o BackupOptions) (*repo.Manifest, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	o = o.withDefaults()
	if err := repo.ValidateAnnotations(o.Annotations); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	if err := ValidType(o.Type); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	conn, si, err := connectServer(ctx, o.DSN, r)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	defer conn.Close(context.Background())
	pgdata := o.PGData
	if pgdata == "" {
		pgdata = si.DataDir
	}
	if err := r.CheckWritable(ctx); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	// Files are read locally: make sure this is the server's directory.
	if id, err := pg.SystemIdentifier(pgdata); err != nil || id != si.SystemID {
		return nil, fmt.Errorf("backup: %s is not the data directory of the server pgkeep connected to (run pgkeep on the database host, and set pgdata)", pgdata)
	}

	if abs, err := filepath.Abs(pgdata); err == nil {
		pgdata = abs
	}
	host, _ := os.Hostname()
	run := backupRun{start: time.Now(), server: si, pgdata: pgdata, host: host}
	var suffix [2]byte
	rand.Read(suffix[:])
	run.id = repo.NewBackupID(run.start, hex.EncodeToString(suffix[:]))
	log.Info("backup starting", "id", run.id, "pgdata", pgdata, "role", run.role(), "checksums", si.Checksums)

	// The timeline the backup starts on: a reference on another one is
	// not trusted by mtime (0 = unknown, same effect). Asked before
	// pg_backup_start, so the backup's connection shows pg_backup_start
	// while it runs; writeBackup checks the timeline again at the stop.
	_ = conn.QueryRow(ctx, `SELECT timeline_id FROM pg_control_checkpoint()`).Scan(&run.timeline)
	run.startLSN, err = startBackup(ctx, conn, si, run.id, o.FastCheckpoint)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	// Phase times say where a slow backup waits: the start checkpoint,
	// or the archiver at the stop.
	log.Info("backup started", "start_lsn", run.startLSN, "checkpoint_seconds", time.Since(run.start).Seconds())
	// Closing the connection (deferred) aborts the non-exclusive backup
	// when writeBackup fails.
	var stopTook time.Duration
	stop := func(m *repo.Manifest) error {
		t0 := time.Now()
		if err := stopBackup(ctx, conn, si, m, run.startLSN); err != nil {
			return err
		}
		stopTook = time.Since(t0)
		return nil
	}
	// The manifest is written while this waits (writeBackup); the
	// connection is the wait's alone by then.
	run.awaitWAL = func(ctx context.Context, m *repo.Manifest) error {
		t1 := time.Now()
		defer func() {
			log.Info("backup stopped", "stop_lsn", m.StopLSN, "stop_seconds", stopTook.Seconds(), "archive_wait_seconds", time.Since(t1).Seconds())
		}()
		if si.Standby {
			// A standby does not switch WAL at backup stop: ask the primary's
			// archiver to be patient, and wait below.
			log.Info("backup from a standby: waiting for the primary to archive the backup's last segment", "segment", m.StopWAL)
		}
		probe := func() (pg.ArchiverState, error) { return pg.QueryArchiver(ctx, conn) }
		return waitForWAL(ctx, r, m.StartWAL, m.StopWAL, si.SegmentSize, o.WALTimeout, probe, log)
	}
	m, err := writeBackup(ctx, r, o, run, stop, log)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	log.Info("backup complete", "id", m.ID, "files", len(m.Files), "data_bytes", m.DataSize,
		"stored_bytes", m.StoredSize, "bytes_reused_from_interrupted", m.BytesResumed, "start_lsn", m.StartLSN, "stop_lsn", m.StopLSN, "seconds", time.Since(run.start).Seconds())
	return m, nil
}

// backupRun is what a backup knows once the server has started it.
type backupRun struct {
	// awaitWAL waits until the backup's WAL is archived (nil: nothing to
	// wait for); writeBackup writes the manifest meanwhile.
	awaitWAL func(context.Context, *repo.Manifest) error
	id       string
	start    time.Time
	startLSN pg.LSN
	timeline uint32
	server   pg.ServerInfo
	pgdata   string
	host     string // os.Hostname: with pgdata, which data directory this is
}

func (b backupRun) role() string {
	if b.server.Standby {
		return "standby"
	}
	return "primary"
}

// writeBackup is the repository's side of a started backup, in commit
// order: the start record and heartbeat (so a concurrent delete keeps the
// backup's WAL and objects), the data directory through the file
// pipeline, stop (the server's pg_backup_stop and the wait for the WAL,
// which fill in the manifest's stop fields), then the commit. The summary
// CommitBackup writes after the manifest is the commit point: when any
// step fails the backup is not listed, and it is marked failed so its
// debris need not age before a delete removes it.
func writeBackup(ctx context.Context, r *repo.Repository, o BackupOptions, run backupRun, stop func(*repo.Manifest) error, log *slog.Logger) (*repo.Manifest, error) {
	id := run.id
	// The heartbeat carries how far the copy got (pgkeep info shows it).
	prog := &countingProgress{inner: o.Progress}
	o.Progress = prog
	typ := o.Type
	refID, err := pickReference(ctx, r, typ, o.Reference, run.server.SystemID)
	if err != nil {
		return nil, err
	}
	switch {
	case refID == "" && typ == TypeChecksum:
		return nil, errors.New("--type checksum needs a committed backup of this system to compare with")
	case refID == "":
		typ = TypeFull
	case typ == "":
		typ = TypeIncr
	}
	// Interrupted backups of this system whose stored blocks may be reused
	// (resume.go).
	system := fmt.Sprint(run.server.SystemID)
	resume, err := r.UnfinishedBackups(ctx, system)
	if err != nil {
		log.Warn("cannot look for interrupted backups to resume; storing every block", "err", err)
		resume = nil
	}
	// Tells a concurrent delete to keep this backup's WAL, and names the
	// reference before its manifest is read: a delete that runs meanwhile
	// either sees it and keeps the reference's packs, or removed the
	// reference's summary first, and then reading the manifest fails
	// (docs/format.md, "Retention by reference"). Interrupted backups to
	// resume are named likewise before their indexes are read.
	if err := r.MarkBackupStarted(ctx, id, repo.StartRecord{
		StartLSN: run.startLSN.String(), SegmentSize: run.server.SegmentSize, Time: run.start.UTC(), Reference: refID,
		SystemIdentifier: system, Resume: resume,
	}); err != nil {
		return nil, err
	}
	// Tells a concurrent delete the backup is running (repo/running.go);
	// a backup that fails says so, so its debris need not age first.
	hb, err := r.StartHeartbeat(ctx, id)
	if err != nil {
		return nil, err
	}
	hb.SetProgress(func() (int64, int64) { return prog.done.Load(), prog.total.Load() })
	committed := false
	defer func() {
		hb.Stop()
		if !committed {
			cause := errors.New("backup did not complete")
			if ctx.Err() != nil {
				cause = context.Cause(ctx)
			}
			mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if err := r.MarkBackupFailed(mctx, id, cause); err != nil {
				log.Warn("could not mark the failed backup as failed; delete removes its debris once its heartbeat is stale", "id", id, "err", err)
			}
		}
	}()

	files, dirs, tbs, followed, err := dataDirContents(run.pgdata)
	if err != nil {
		return nil, err
	}
	if !slices.ContainsFunc(files, func(f sourceFile) bool { return f.Rel == "global/pg_control" }) {
		// Never commit a backup that could not restore a cluster.
		return nil, fmt.Errorf("%s has no global/pg_control: not a data directory, nothing was backed up", run.pgdata)
	}
	for _, l := range followed {
		log.Warn("data directory entry is a symlink; backing up what it points to (the restore has a copy, not a link)", "link", l)
	}
	si := run.server
	m := &repo.Manifest{Summary: repo.Summary{
		ID: id, StartTime: run.start.UTC(), StartLSN: run.startLSN.String(),
		SystemIdentifier: fmt.Sprint(si.SystemID), PGVersion: si.Version, SegmentSize: si.SegmentSize,
		DataChecksums: si.Checksums, Host: run.host, PGData: run.pgdata, Role: run.role(), Schedule: o.Schedule, Annotations: o.Annotations,
	}, Dirs: dirs, Tablespaces: tbs, BlockSize: o.BlockSize}

	c := &copier{r: r, o: o, id: id, log: log, startLSN: run.startLSN, checksums: si.Checksums}
	if refID != "" {
		if typ, err = loadReference(ctx, r, c, refID, typ, run, log); err != nil {
			return nil, err
		}
		if c.ref != nil {
			m.Reference = refID
			log.Info("backup reuses blocks of a reference backup", "type", typ, "reference", refID)
		}
	}
	m.Type = typ
	if err := planCapture(ctx, r, c, typ, run, files, log); err != nil {
		return nil, err
	}
	if len(resume) > 0 {
		loadResume(ctx, r, c, resume, log)
	}
	if err := c.run(ctx, files); err != nil {
		return nil, err
	}
	m.Capture = c.finishCapture(log)
	m.Files, m.Packs, m.Maps = c.result()
	m.InlineBlocks = o.wholeBlocks
	m.BytesRead = c.stats.read.Load()
	m.BytesResumed = c.stats.resumed.Load()
	if m.BytesResumed > 0 {
		m.Resumed = resumedFrom(m.Packs, resume)
		log.Info("reused blocks stored by interrupted backups", "backups", m.Resumed, "bytes_reused", m.BytesResumed)
	}
	for _, f := range m.Files {
		m.DataSize += f.Size
	}
	for _, p := range m.Packs {
		if strings.HasPrefix(p.Name, repo.BackupPrefix(id)) {
			m.StoredSize += p.Size // what this backup added
		}
	}

	if err := stop(m); err != nil {
		return nil, err
	}
	// The maps and the manifest are written while the archiver pushes the
	// backup's last segment (about a wal-push, ~75 ms here, on every
	// backup); the summary, the commit point, waits for both. A wait that
	// fails leaves them as the debris of a failed backup.
	// Map mode's check that the segments it mapped from pg_wal are the
	// ones archived (which decodes them) goes with the wait.
	// A failed PrepareCommit ends the wait: the backup cannot commit, and
	// waiting out wal.timeout for it would only delay the error.
	walCtx, cancelWAL := context.WithCancel(ctx)
	defer cancelWAL()
	walDone := make(chan error, 1)
	go func() {
		if run.awaitWAL != nil {
			if err := run.awaitWAL(walCtx, m); err != nil {
				walDone <- err
				return
			}
		}
		walDone <- c.plan.checkLocal(walCtx, r)
	}()
	if err := r.PrepareCommit(ctx, m); err != nil {
		cancelWAL()
		<-walDone
		return nil, err
	}
	if err := <-walDone; err != nil {
		return nil, err
	}
	if c.skipUnread && m.Timeline != c.ref.Timeline {
		return nil, fmt.Errorf("the timeline changed during the backup (%d, reference %s on %d): files were taken unread by mtime; run the backup again", m.Timeline, c.ref.ID, c.ref.Timeline)
	}
	if err := hb.Healthy(); err != nil {
		return nil, fmt.Errorf("not committed: %w", err)
	}
	if err := r.PublishBackup(ctx, m); err != nil {
		if errors.Is(err, repo.ErrScheduleTaken) {
			// Never visible; its objects would only wait for retention.
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			derr := r.DeleteBackup(dctx, id)
			cancel()
			if derr != nil {
				log.Warn("removing the uncommitted backup failed; retention removes it", "id", id, "err", derr)
			}
		}
		return nil, err
	}
	committed = true
	// Only an uncommitted backup is ever resumed, and an interrupted one
	// only once: what this backup did not reuse of it is stale (the rest of
	// its debris waits for delete).
	for _, b := range append([]string{id}, resume...) {
		if n, err := r.DropPackIndexes(ctx, b); err != nil {
			log.Warn("could not remove pack indexes; they are removed with their backup", "id", b, "left", n, "err", err)
		}
	}
	return m, nil
}

// resumedFrom is the interrupted backups among ids whose packs are in packs.
func resumedFrom(packs []repo.Pack, ids []string) []string {
	var out []string
	for _, id := range ids {
		for _, p := range packs {
			if strings.HasPrefix(p.Name, repo.BackupPrefix(id)) {
				out = append(out, id)
				break
			}
		}
	}
	return out
}

// countingProgress counts bytes for the heartbeat and passes them on.
type countingProgress struct {
	inner       Progress
	done, total atomic.Int64
}

func (p *countingProgress) Start(total int64) {
	p.total.Store(total)
	if p.inner != nil {
		p.inner.Start(total)
	}
}

func (p *countingProgress) Add(n int64) {
	p.done.Add(n)
	if p.inner != nil {
		p.inner.Add(n)
	}
}

func (p *countingProgress) Finish() {
	if p.inner != nil {
		p.inner.Finish()
	}
}

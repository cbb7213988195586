package archive

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/storage"
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
	Logger      *slog.Logger
}

// Progress receives a backup's or restore's progress.
type Progress interface {
	Start(total int64)
	Add(n int64)
	Finish()
}

// ErrChecksum means a data page failed its checksum.
var ErrChecksum = errors.New("data page checksum mismatch")

type serverInfo struct {
	version     int
	standby     bool
	checksums   bool
	sysid       uint64
	dataDir     string
	segmentSize int64
}

// connectServer connects to the server, learns what pgkeep needs to know
// about it, and makes sure the repository belongs to it.
func connectServer(ctx context.Context, dsn string, r *repo.Repository) (*pgx.Conn, serverInfo, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, serverInfo{}, fmt.Errorf("connect: %w", err)
	}
	si, err := queryServer(ctx, conn)
	if err == nil {
		err = r.BindSystem(ctx, si.sysid)
	}
	if err != nil {
		conn.Close(context.Background())
		return nil, si, err
	}
	return conn, si, nil
}

func queryServer(ctx context.Context, conn *pgx.Conn) (serverInfo, error) {
	var si serverInfo
	var checksums, seg string
	err := conn.QueryRow(ctx, `SELECT current_setting('server_version_num')::int, pg_is_in_recovery(),
		current_setting('data_checksums'), (SELECT system_identifier FROM pg_control_system()),
		current_setting('data_directory'), (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size')`).
		Scan(&si.version, &si.standby, &checksums, &si.sysid, &si.dataDir, &seg)
	if err != nil {
		return si, fmt.Errorf("query server (needs a superuser or pg_read_all_settings + backup privileges): %w", err)
	}
	si.checksums = checksums == "on"
	si.segmentSize, err = strconv.ParseInt(seg, 10, 64)
	if err != nil || !pg.ValidSegmentSize(si.segmentSize) {
		return si, fmt.Errorf("unexpected wal_segment_size %q", seg)
	}
	if si.version < 130000 {
		return si, fmt.Errorf("PostgreSQL %d is not supported (13 or newer)", si.version/10000)
	}
	return si, nil
}

// Backup takes a full online base backup of the local cluster into r and
// returns its manifest once it is committed.
func Backup(ctx context.Context, r *repo.Repository, o BackupOptions) (*repo.Manifest, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
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
	if err := repo.ValidateAnnotations(o.Annotations); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	// The heartbeat carries how far the copy got (pgkeep info shows it).
	prog := &countingProgress{inner: o.Progress}
	o.Progress = prog
	conn, si, err := connectServer(ctx, o.DSN, r)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	defer conn.Close(context.Background())
	pgdata := o.PGData
	if pgdata == "" {
		pgdata = si.dataDir
	}
	if err := r.CheckWritable(ctx); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	// Files are read locally: make sure this is the server's directory.
	if id, err := pg.SystemIdentifier(pgdata); err != nil || id != si.sysid {
		return nil, fmt.Errorf("backup: %s is not the data directory of the server pgkeep connected to (run pgkeep on the database host, and set pgdata)", pgdata)
	}

	start := time.Now()
	var suffix [2]byte
	rand.Read(suffix[:])
	id := repo.NewBackupID(start, hex.EncodeToString(suffix[:]))
	role := "primary"
	if si.standby {
		role = "standby"
	}
	host, _ := os.Hostname()
	log.Info("backup starting", "id", id, "pgdata", pgdata, "role", role, "checksums", si.checksums)

	var startLSNText string
	if si.version >= 150000 {
		err = conn.QueryRow(ctx, "SELECT pg_backup_start($1, $2)::text", "pgkeep "+id, o.FastCheckpoint).Scan(&startLSNText)
	} else {
		err = conn.QueryRow(ctx, "SELECT pg_start_backup($1, $2, false)::text", "pgkeep "+id, o.FastCheckpoint).Scan(&startLSNText)
	}
	if err != nil {
		return nil, fmt.Errorf("backup: start: %w", err)
	}
	startLSN, err := pg.ParseLSN(startLSNText)
	if err != nil {
		return nil, fmt.Errorf("backup: start: %w", err)
	}
	// Tells a concurrent delete to keep this backup's WAL.
	if err := r.MarkBackupStarted(ctx, id, repo.StartRecord{
		StartLSN: startLSN.String(), SegmentSize: si.segmentSize, Time: start.UTC(),
	}); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	// Tells a concurrent delete the backup is running (repo/running.go);
	// a backup that fails says so, so its debris need not age first.
	hb, err := r.StartHeartbeat(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
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

	files, dirs, tbs, followed, err := dataDirContents(pgdata)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	for _, l := range followed {
		log.Warn("data directory entry is a symlink; backing up what it points to (the restore has a copy, not a link)", "link", l)
	}
	m := &repo.Manifest{Summary: repo.Summary{
		ID: id, StartTime: start.UTC(), StartLSN: startLSN.String(),
		SystemIdentifier: fmt.Sprint(si.sysid), PGVersion: si.version, SegmentSize: si.segmentSize,
		DataChecksums: si.checksums, Host: host, Role: role, Schedule: o.Schedule, Annotations: o.Annotations,
	}, Dirs: dirs, Tablespaces: tbs, BlockSize: o.BlockSize}

	c := &copier{r: r, o: o, id: id, log: log, startLSN: startLSN, checksums: si.checksums}
	if err := c.run(ctx, files); err != nil {
		// Closing the connection aborts the non-exclusive backup.
		return nil, fmt.Errorf("backup: %w", err)
	}
	m.Files, m.Packs = c.result()
	for _, f := range m.Files {
		m.DataSize += f.Size
	}
	for _, p := range m.Packs {
		m.StoredSize += p.Size
	}

	var stopLSNText, label, spcmap string
	if si.version >= 150000 {
		err = conn.QueryRow(ctx, "SELECT lsn::text, labelfile, coalesce(spcmapfile, '') FROM pg_backup_stop(false)").Scan(&stopLSNText, &label, &spcmap)
	} else {
		err = conn.QueryRow(ctx, "SELECT lsn::text, labelfile, coalesce(spcmapfile, '') FROM pg_stop_backup(false, false)").Scan(&stopLSNText, &label, &spcmap)
	}
	if err != nil {
		return nil, fmt.Errorf("backup: stop (was PostgreSQL stopped or the standby promoted during the backup?): %w", err)
	}
	stopLSN, err := pg.ParseLSN(stopLSNText)
	if err != nil {
		return nil, fmt.Errorf("backup: stop: %w", err)
	}
	tli, err := labelTimeline(label)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	m.StopTime = time.Now().UTC()
	m.StopLSN = stopLSN.String()
	m.Timeline = tli
	m.BackupLabel = label
	m.TablespaceMap = spcmap
	m.StartWAL = startLSN.Segment(tli, si.segmentSize).Name
	m.StopWAL = (stopLSN - 1).Segment(tli, si.segmentSize).Name
	if si.standby {
		// A standby does not switch WAL at backup stop: ask the primary's
		// archiver to be patient, and wait below.
		log.Info("backup from a standby: waiting for the primary to archive the backup's last segment", "segment", m.StopWAL)
	}
	probe := func() (archiverState, error) { return queryArchiver(ctx, conn) }
	if err := waitForWAL(ctx, r, m.StartWAL, m.StopWAL, si.segmentSize, o.WALTimeout, probe, log); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	if err := hb.Healthy(); err != nil {
		return nil, fmt.Errorf("backup: not committed: %w", err)
	}
	if err := r.CommitBackup(ctx, m); err != nil {
		if errors.Is(err, repo.ErrScheduleTaken) {
			// Never visible; its objects would only wait for retention.
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			derr := r.DeleteBackup(dctx, id)
			cancel()
			if derr != nil {
				log.Warn("removing the uncommitted backup failed; retention removes it", "id", id, "err", derr)
			}
		}
		return nil, fmt.Errorf("backup: %w", err)
	}
	committed = true
	log.Info("backup complete", "id", id, "files", len(m.Files), "data_bytes", m.DataSize,
		"stored_bytes", m.StoredSize, "start_lsn", m.StartLSN, "stop_lsn", m.StopLSN, "seconds", time.Since(start).Seconds())
	return m, nil
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

var labelTLIRE = regexp.MustCompile(`(?m)^START TIMELINE: ([0-9]+)$`)

func labelTimeline(label string) (uint32, error) {
	mm := labelTLIRE.FindStringSubmatch(label)
	if mm == nil {
		return 0, errors.New("backup_label has no START TIMELINE")
	}
	n, err := strconv.ParseUint(mm[1], 10, 32)
	return uint32(n), err
}

// archiverState is what pg_stat_archiver says about the server's own
// archiving: whether its latest attempt failed, and on which file.
type archiverState struct {
	failing    bool // the last failure is newer than the last success
	failedWAL  string
	failedAt   time.Time
	failedRuns int64
}

func queryArchiver(ctx context.Context, conn *pgx.Conn) (archiverState, error) {
	var st archiverState
	var failedAt *time.Time
	err := conn.QueryRow(ctx, `SELECT coalesce(last_failed_wal, ''), last_failed_time, failed_count,
		coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) FROM pg_stat_archiver`).
		Scan(&st.failedWAL, &failedAt, &st.failedRuns, &st.failing)
	if failedAt != nil {
		st.failedAt = *failedAt
	}
	return st, err
}

// waitForWAL waits until every segment from first to last is archived,
// giving up early if the server that should archive them is gone (probe
// fails). When the server's own archiver reports failures meanwhile, it
// says so at once in the log and in the timeout error: a backup waiting on
// a broken archive_command is the usual cause, and the server log has the
// command's own error.
func waitForWAL(ctx context.Context, r *repo.Repository, first, last string, segSize int64, timeout time.Duration,
	probe func() (archiverState, error), log *slog.Logger) error {
	f, _ := pg.ParseWALFileName(first)
	l, _ := pg.ParseWALFileName(last)
	deadline := time.Now().Add(timeout)
	// The last segment is usually archived within a wal-push or two of
	// pg_backup_stop: poll soon, then back off to 200 ms, so a backup does
	// not idle most of a fixed interval on every wait.
	wait := 10 * time.Millisecond
	var st archiverState
	warned := false
	for seg := f; seg.SegNo(segSize) <= l.SegNo(segSize); {
		_, err := r.Backend.Stat(ctx, repo.WALObjectName(seg))
		if err == nil {
			seg = seg.NextSegment(segSize)
			continue
		}
		if !errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("check archived WAL %s: %w", seg.Name, err)
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("WAL segment %s needed by the backup was not archived within %s", seg.Name, timeout)
			if st.failing {
				return fmt.Errorf("%s: PostgreSQL's archiver is failing (%d failures so far, the last on %s at %s; the server log has archive_command's error)",
					msg, st.failedRuns, st.failedWAL, st.failedAt.UTC().Format(time.RFC3339))
			}
			return fmt.Errorf("%s (is archive_command = 'pgkeep wal-push %%p' working?)", msg)
		}
		if st, err = probe(); err != nil {
			return fmt.Errorf("PostgreSQL went away before WAL segment %s needed by the backup was archived: %w", seg.Name, err)
		}
		if st.failing && !warned {
			warned = true
			log.Warn("PostgreSQL's archiver is failing; still waiting for the backup's WAL (the server log has archive_command's error)",
				"waiting_for", seg.Name, "last_failed_wal", st.failedWAL, "last_failed_time", st.failedAt.UTC())
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx) // "terminated signal received", not "context canceled"
		case <-time.After(wait):
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
	return nil
}

// copier runs the block pipeline: workers read, check, compress and encrypt
// blocks; writers append them to packs streamed to storage.
type copier struct {
	r         *repo.Repository
	o         BackupOptions
	id        string
	log       *slog.Logger
	startLSN  pg.LSN
	checksums bool

	mu      sync.Mutex
	files   []repo.File
	blocks  [][]repo.BlockRef // per file, by block index
	hashes  [][][32]byte
	vanish  []bool
	packs   []repo.Pack
	packSeq atomic.Int64

	// free holds encoded-block buffers for reuse: a block's object is built
	// in one (repo.Codec.EncodeBlock) and the buffer comes back once a
	// writer has stored it, so blocks seldom allocate and the memory in use
	// stays at about the blocks in flight.
	free chan []byte
}

type blockJob struct {
	file  int
	index int
	src   *sourceFile
	off   int64
	len   int64
}

type encodedBlock struct {
	data []byte
	done func(pack int, offset int64)
}

var plainPool = sync.Pool{}

func (c *copier) run(ctx context.Context, files []sourceFile) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	c.files = make([]repo.File, len(files))
	c.blocks = make([][]repo.BlockRef, len(files))
	c.hashes = make([][][32]byte, len(files))
	c.vanish = make([]bool, len(files))
	var total int64
	var jobs []blockJob
	for i := range files {
		f := &files[i]
		total += f.Size
		c.files[i] = repo.File{Path: f.Rel, Mode: uint32(f.Mode)}
		n := int((f.Size + c.o.BlockSize - 1) / c.o.BlockSize)
		c.blocks[i] = make([]repo.BlockRef, n)
		c.hashes[i] = make([][32]byte, n)
		for b := 0; b < n; b++ {
			jobs = append(jobs, blockJob{file: i, index: b, src: f, off: int64(b) * c.o.BlockSize, len: min(c.o.BlockSize, f.Size-int64(b)*c.o.BlockSize)})
		}
	}
	if c.o.Progress != nil {
		c.o.Progress.Start(total)
		defer c.o.Progress.Finish()
	}

	jobCh := make(chan blockJob)
	blockCh := make(chan encodedBlock, c.o.Writers)
	// One buffer per worker, per queued block and per writer.
	c.free = make(chan []byte, c.o.Workers+2*c.o.Writers)
	var workers, writers sync.WaitGroup
	for w := 0; w < c.o.Workers; w++ {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for j := range jobCh {
				if err := c.doBlock(ctx, j, blockCh); err != nil {
					cancel(err)
				}
			}
		}()
	}
	for w := 0; w < c.o.Writers; w++ {
		writers.Add(1)
		go func() {
			defer writers.Done()
			if err := c.writePacks(ctx, blockCh); err != nil {
				cancel(err)
			}
		}()
	}
feed:
	for _, j := range jobs {
		select {
		case jobCh <- j:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobCh)
	workers.Wait()
	close(blockCh)
	writers.Wait()
	if err := context.Cause(ctx); err != nil {
		return err
	}
	return nil
}

// doBlock reads, verifies and encodes one block and hands it to a writer.
func (c *copier) doBlock(ctx context.Context, j blockJob, out chan<- encodedBlock) error {
	if ctx.Err() != nil {
		return nil
	}
	f, err := os.Open(j.src.Abs)
	if os.IsNotExist(err) {
		c.markVanished(j.file)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", j.src.Rel, err)
	}
	defer f.Close()
	buf, _ := plainPool.Get().([]byte)
	if int64(cap(buf)) < j.len {
		buf = make([]byte, c.o.BlockSize)
	}
	buf = buf[:j.len]
	defer plainPool.Put(buf[:0]) //nolint:staticcheck // slices are fine in a pool here
	n, err := f.ReadAt(buf, j.off)
	if err != nil && err != io.EOF {
		return fmt.Errorf("read %s: %w", j.src.Rel, err)
	}
	buf = buf[:n] // the file may have shrunk; WAL replay restores it
	if c.checksums {
		if err := c.checkPages(f, j, buf); err != nil {
			if !c.o.ChecksumWarnOnly {
				return err
			}
			c.log.Warn("checksum failure", "err", err)
		}
	}
	var dst []byte
	select {
	case dst = <-c.free:
	default:
	}
	enc, sum, err := c.r.Codec().EncodeBlock(dst[:0], buf)
	if err != nil {
		return fmt.Errorf("encode %s: %w", j.src.Rel, err)
	}
	plainLen := int64(n)
	done := func(pack int, offset int64) {
		c.mu.Lock()
		c.blocks[j.file][j.index] = repo.BlockRef{Pack: pack, Offset: offset, Length: int64(len(enc)), FileOffset: j.off, Size: plainLen}
		c.hashes[j.file][j.index] = sum
		c.mu.Unlock()
	}
	if c.o.Progress != nil {
		c.o.Progress.Add(j.len)
	}
	select {
	case out <- encodedBlock{data: enc, done: done}:
		return nil
	case <-ctx.Done():
		return nil
	}
}

// release gives an encoded block's buffer back for reuse. Small ones (a
// small file's) are left to the GC; the others keep the size the content
// needed, so they stay small for compressible data.
func (c *copier) release(b []byte) {
	if int64(cap(b)) < c.o.BlockSize/4 {
		return
	}
	select {
	case c.free <- b[:0]:
	default:
	}
}

func (c *copier) markVanished(i int) {
	c.mu.Lock()
	c.vanish[i] = true
	c.mu.Unlock()
}

// checkPages verifies the data checksum of every page of a relation file
// block. Pages changed after the backup started may be torn by a
// concurrent write (WAL replay repairs them) and are not checked; a failing
// page is read once more before it counts as corrupt.
func (c *copier) checkPages(f *os.File, j blockJob, buf []byte) error {
	segno, ok := pg.ChecksummedFile(j.src.Rel)
	if !ok {
		return nil
	}
	for p := 0; p+pg.BlockSize <= len(buf); p += pg.BlockSize {
		page := buf[p : p+pg.BlockSize]
		if pg.IsNewPage(page) {
			continue
		}
		blk := segno*pg.RelSegBlocks + uint32((j.off+int64(p))/pg.BlockSize)
		h := pg.ParsePageHeader(page)
		if h.LSN >= c.startLSN || pg.PageChecksum(page, blk) == h.Checksum {
			continue
		}
		if _, err := f.ReadAt(page, j.off+int64(p)); err != nil && err != io.EOF {
			return fmt.Errorf("re-read %s: %w", j.src.Rel, err)
		}
		h = pg.ParsePageHeader(page)
		if pg.IsNewPage(page) || h.LSN >= c.startLSN || pg.PageChecksum(page, blk) == h.Checksum {
			continue
		}
		return fmt.Errorf("%w in %s block %d (stored %d, computed %d)", ErrChecksum, j.src.Rel,
			(j.off+int64(p))/pg.BlockSize, h.Checksum, pg.PageChecksum(page, blk))
	}
	return nil
}

// writePacks appends blocks to packs streamed to storage, closing a pack
// once it reaches PackSize.
func (c *copier) writePacks(ctx context.Context, in <-chan encodedBlock) error {
	var (
		pw     *io.PipeWriter
		result chan error
		n      int
		name   string
		off    int64
	)
	closePack := func() error {
		if pw == nil {
			return nil
		}
		pw.Close()
		err := <-result
		pw = nil
		if err != nil {
			return fmt.Errorf("upload %s: %w", name, err)
		}
		c.mu.Lock()
		for len(c.packs) <= n {
			c.packs = append(c.packs, repo.Pack{})
		}
		c.packs[n] = repo.Pack{Name: name, Size: off}
		c.mu.Unlock()
		return nil
	}
	for b := range in {
		if ctx.Err() != nil {
			continue // drain so workers never block
		}
		if pw == nil {
			n = int(c.packSeq.Add(1) - 1)
			name = repo.PackName(c.id, n)
			off = 0
			var pr *io.PipeReader
			pr, pw = io.Pipe()
			result = make(chan error, 1)
			go func(name string) {
				err := c.r.Backend.Put(ctx, name, pr, storage.PutOptions{IfAbsent: true})
				pr.CloseWithError(errors.New("upload stopped"))
				result <- err
			}(name)
		}
		if _, err := pw.Write(b.data); err != nil {
			pw.CloseWithError(err)
			// The write failed because the upload did: its error is the
			// cause (ENOSPC, connection refused), not the closed pipe.
			if perr := <-result; perr != nil {
				err = perr
			}
			pw = nil
			return fmt.Errorf("upload %s: %w", name, err)
		}
		b.done(n, off)
		off += int64(len(b.data))
		c.release(b.data) // the pipe's reader has consumed it
		if off >= c.o.PackSize {
			if err := closePack(); err != nil {
				return err
			}
		}
	}
	if ctx.Err() != nil && pw != nil {
		pw.CloseWithError(ctx.Err())
		<-result
		return nil
	}
	return closePack()
}

// result assembles the manifest's file and pack lists.
func (c *copier) result() ([]repo.File, []repo.Pack) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var files []repo.File
	for i, f := range c.files {
		if c.vanish[i] {
			continue
		}
		var size int64
		var refs []repo.BlockRef
		h := sha256.New()
		for b, ref := range c.blocks[i] {
			if ref.Size == 0 {
				continue
			}
			refs = append(refs, ref)
			h.Write(c.hashes[i][b][:])
			size = ref.FileOffset + ref.Size
		}
		f.Blocks = refs
		f.Size = size
		f.SHA256 = hex.EncodeToString(h.Sum(nil))
		files = append(files, f)
	}
	return files, c.packs
}

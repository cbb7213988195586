// Package drill rehearses a restore: it restores a backup into a scratch
// directory, starts PostgreSQL there on loopback with archiving off, lets
// it recover to the end of the archive (or a target) and promote, checks a
// bounded sample of the data with pg_amcheck and an optional SQL query,
// then stops it and removes the scratch directory, whatever happened.
//
// It reads the repository and writes nothing into it: the restored copy
// has archive_mode off and no archive_command, so its new timeline never
// reaches the repository. It never writes into the member's own data
// directory or a running cluster's (restore refuses those).
package drill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/restore"
)

// Options configures one drill.
type Options struct {
	// BackupID is the backup to restore; "" or "latest": the newest (before
	// the target, when there is one).
	BackupID string
	// Target is where recovery stops (restore.ParseTarget's); the zero
	// value replays all archived WAL. A drill always promotes at its
	// target (a copy without hot standby cannot pause), so Action may only
	// be the default or promote.
	Target restore.Target
	// ScratchDir is the directory the drill makes its scratch directory
	// in (pgkeep-drill-*); default os.TempDir(). The scratch directory may
	// not overlap MemberDataDir nor any running cluster's directories.
	ScratchDir string
	// MemberDataDir is this member's own data directory, refused as a
	// location even when its PostgreSQL is not running.
	MemberDataDir string
	// MaxBytes refuses a backup whose database size exceeds it (0: no
	// limit but the free space of ScratchDir).
	MaxBytes int64
	// BinDir holds postgres and pg_amcheck; "" finds the binaries of the
	// backup's major version (Debian's /usr/lib/postgresql/N/bin, RHEL's
	// /usr/pgsql-N/bin, then pg_config and PATH).
	BinDir string
	// RestoreCommand is the restored copy's restore_command (pgkeep
	// wal-fetch %f %p with the caller's config).
	RestoreCommand string
	// User and Database are what the checks connect as and to (over the
	// scratch directory's unix socket, trust); default the OS user name
	// and postgres.
	User     string
	Database string
	// SQL, when set, must return one row of one column that is true.
	SQL string
	// AmcheckRelations bounds the tables pg_amcheck checks (with their
	// indexes and TOAST), chosen at random across the databases; default
	// 50, negative: no pg_amcheck.
	AmcheckRelations int
	// AmcheckTimeout bounds pg_amcheck's run (default 10m): a check that
	// does not finish in time fails the drill.
	AmcheckTimeout time.Duration
	// RecoveryTimeout bounds the time from starting PostgreSQL to its
	// promotion (default 6h).
	RecoveryTimeout time.Duration
	// SharedBuffers of the copy (default 64MB): a drill must not take the
	// member's memory.
	SharedBuffers string
	// Workers, WALPrefetchBytes and WALWorkers are restore's
	// (restore.BackupOptions).
	Workers          int
	WALPrefetchBytes int64
	WALWorkers       int
	Logger           *slog.Logger
}

// Result is what a drill measured.
type Result struct {
	BackupID   string    `json:"backup_id"`
	Started    time.Time `json:"started"`
	Finished   time.Time `json:"finished"`
	ScratchDir string    `json:"scratch_dir"`
	// RestoreToQuery is from the start of the restore to the first query
	// answered by the promoted copy: the recovery time a real restore
	// of this backup would take here.
	RestoreToQuery time.Duration `json:"-"`
	// Restore is the base backup's restore; Recovery from the start of
	// PostgreSQL to its promotion; Checks pg_amcheck and the SQL check.
	Restore, Recovery, Checks time.Duration `json:"-"`
	// DataSize is the backup's size in the database; Downloaded what the
	// restore read from the repository.
	DataSize   int64 `json:"data_size"`
	Downloaded int64 `json:"bytes_downloaded"`
	// Timeline and LSN are the copy's after promotion: how far recovery got.
	Timeline uint32 `json:"timeline"`
	LSN      string `json:"lsn"`
	// AmcheckRelations is the number of tables pg_amcheck checked.
	AmcheckRelations int  `json:"amcheck_relations"`
	SQLChecked       bool `json:"sql_checked"`
}

// Defaults.
const (
	DefaultAmcheckRelations = 50
	DefaultAmcheckTimeout   = 10 * time.Minute
	DefaultRecoveryTimeout  = 6 * time.Hour
	DefaultSharedBuffers    = "64MB"
	// The bounds of what users may ask for.
	MaxAmcheckRelations = 100000
	MaxAmcheckTimeout   = 24 * time.Hour
	MaxRecoveryTimeout  = 7 * 24 * time.Hour
	// maxWALSize bounds the WAL the copy keeps in pg_wal while it recovers
	// (max_wal_size), part of the disk budget.
	maxWALSize = 1 << 30
	// scratchPrefix names scratch directories.
	scratchPrefix = "pgkeep-drill-"
)

// ErrBudget means the backup does not fit the drill's disk budget.
var ErrBudget = errors.New("the backup does not fit the drill's disk budget")

// Run restores, recovers, checks and removes one copy; the error names
// the first problem (the corrupt object, the FATAL recovery ended with,
// the corruption pg_amcheck found). The scratch directory and the copy's
// PostgreSQL are gone when it returns, also when ctx is cancelled.
func Run(ctx context.Context, r *repo.Repository, o Options) (res Result, err error) {
	res.Started = time.Now()
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := o.defaults(); err != nil {
		return res, fmt.Errorf("drill: %w", err)
	}
	sum, err := chooseBackup(ctx, r, &o)
	if err != nil {
		return res, fmt.Errorf("drill: %w", err)
	}
	res.BackupID, res.DataSize = sum.ID, sum.DataSize
	bins, err := findBinaries(ctx, o.BinDir, sum.PGVersion/10000)
	if err != nil {
		return res, fmt.Errorf("drill: %w", err)
	}
	m, err := r.ReadManifest(ctx, sum.ID)
	if err != nil {
		return res, fmt.Errorf("drill: %w", err)
	}
	if err := checkScratchLocation(o); err != nil {
		return res, fmt.Errorf("drill: %w", err)
	}
	// What a drill that died left behind would count against the budget.
	removeStale(o.ScratchDir, log)
	if err := checkBudget(o, sum); err != nil {
		return res, fmt.Errorf("drill: %w", err)
	}
	dir, lock, err := makeScratch(o)
	if err != nil {
		return res, fmt.Errorf("drill: %w", err)
	}
	res.ScratchDir = dir
	log = log.With("drill", filepath.Base(dir))
	var srv *server
	defer func() {
		if ctx.Err() != nil && err != nil {
			err = fmt.Errorf("drill of backup %s interrupted (%w); the copy was stopped and removed", res.BackupID, ctx.Err())
		}
		// Whatever happened: stop the copy, remove its directory.
		if srv != nil {
			if serr := srv.stop(); serr != nil {
				err = errors.Join(err, fmt.Errorf("drill: stop PostgreSQL: %w", serr))
			}
		}
		if rerr := os.RemoveAll(dir); rerr != nil {
			err = errors.Join(err, fmt.Errorf("drill: remove scratch directory: %w", rerr))
		}
		lock.Close()
		res.Finished = time.Now()
	}()

	pgdata := filepath.Join(dir, "data")
	tblMap := map[string]string{}
	for _, t := range m.Tablespaces {
		// Never the member's own tablespace directories.
		tblMap[t.OID] = filepath.Join(dir, "tablespaces", t.OID)
	}
	log.Info("drill: restoring", "backup", sum.ID, "scratch", dir, "data_size", sum.DataSize)
	restoreStart := time.Now()
	rr, err := restore.Backup(ctx, r, restore.BackupOptions{
		PGData:           pgdata,
		BackupID:         sum.ID,
		Target:           o.Target,
		RestoreCommand:   o.RestoreCommand,
		ArchiveModeOff:   true,
		TablespaceMap:    tblMap,
		Workers:          o.Workers,
		WALPrefetchBytes: o.WALPrefetchBytes,
		WALWorkers:       o.WALWorkers,
		Logger:           log,
	})
	res.Downloaded = rr.BytesDownloaded
	if err != nil {
		return res, fmt.Errorf("drill of backup %s: %w", sum.ID, err)
	}
	res.Restore = time.Since(restoreStart)

	recStart := time.Now()
	srv, err = startServer(ctx, bins, dir, pgdata, sum.PGVersion, o, log)
	if err != nil {
		return res, fmt.Errorf("drill of backup %s: %w", sum.ID, err)
	}
	conn, err := srv.waitPromoted(ctx, o.RecoveryTimeout)
	if err != nil {
		return res, fmt.Errorf("drill of backup %s: %w", sum.ID, err)
	}
	res.RestoreToQuery = time.Since(restoreStart)
	res.Recovery = time.Since(recStart)
	defer conn.Close(context.Background())
	var walName string
	if err := conn.QueryRow(ctx, `SELECT pg_walfile_name(pg_current_wal_lsn()), pg_current_wal_lsn()::text`).Scan(&walName, &res.LSN); err != nil {
		return res, fmt.Errorf("drill of backup %s: read the promoted copy's position: %w", sum.ID, err)
	}
	if seg, err := pg.ParseWALFileName(walName); err == nil {
		res.Timeline = seg.Timeline
	}
	log.Info("drill: promoted", "backup", sum.ID, "restore_to_query", res.RestoreToQuery.Round(time.Millisecond), "timeline", res.Timeline, "lsn", res.LSN)

	checkStart := time.Now()
	if o.AmcheckRelations > 0 {
		n, err := srv.amcheck(ctx, conn, bins, o)
		res.AmcheckRelations = n
		if err != nil {
			return res, fmt.Errorf("drill of backup %s: %w", sum.ID, err)
		}
	}
	if o.SQL != "" {
		if err := sqlCheck(ctx, srv, o); err != nil {
			return res, fmt.Errorf("drill of backup %s: %w", sum.ID, err)
		}
		res.SQLChecked = true
	}
	res.Checks = time.Since(checkStart)
	log.Info("drill: succeeded", "backup", sum.ID, "restore_to_query", res.RestoreToQuery.Round(time.Millisecond),
		"amcheck_relations", res.AmcheckRelations, "sql_checked", res.SQLChecked)
	return res, nil
}

func (o *Options) defaults() error {
	if os.Geteuid() == 0 {
		return errors.New("run as the PostgreSQL user, not root (PostgreSQL refuses to run as root)")
	}
	if o.RestoreCommand == "" {
		return errors.New("no restore_command for the copy")
	}
	switch o.Target.Action {
	case restore.ActionDefault, restore.ActionPromote:
	default:
		return fmt.Errorf("target action %q: a drill always promotes at its target", o.Target.Action)
	}
	if o.Target.Kind != restore.TargetLatest {
		// Without hot standby, pause (PostgreSQL's default) would shut down.
		o.Target.Action = restore.ActionPromote
	}
	if o.ScratchDir == "" {
		o.ScratchDir = os.TempDir()
	}
	if !filepath.IsAbs(o.ScratchDir) {
		return fmt.Errorf("scratch directory %q is not an absolute path", o.ScratchDir)
	}
	if o.MaxBytes < 0 {
		return fmt.Errorf("max bytes %d is negative", o.MaxBytes)
	}
	if o.User == "" {
		u, err := user.Current()
		if err != nil {
			return fmt.Errorf("no user to connect as: %w", err)
		}
		o.User = u.Username
	}
	if o.Database == "" {
		o.Database = "postgres"
	}
	if err := o.CheckBounds(); err != nil {
		return err
	}
	if o.AmcheckRelations == 0 {
		o.AmcheckRelations = DefaultAmcheckRelations
	}
	if o.AmcheckTimeout <= 0 {
		o.AmcheckTimeout = DefaultAmcheckTimeout
	}
	if o.RecoveryTimeout <= 0 {
		o.RecoveryTimeout = DefaultRecoveryTimeout
	}
	if o.SharedBuffers == "" {
		o.SharedBuffers = DefaultSharedBuffers
	}
	return nil
}

// CheckBounds refuses counts and durations out of their bounds (0 means
// the default).
func (o *Options) CheckBounds() error {
	if o.AmcheckRelations < -1 || o.AmcheckRelations > MaxAmcheckRelations {
		return fmt.Errorf("amcheck tables %d is outside -1 (none) .. %d", o.AmcheckRelations, MaxAmcheckRelations)
	}
	if o.AmcheckTimeout < 0 || o.AmcheckTimeout > MaxAmcheckTimeout {
		return fmt.Errorf("amcheck timeout %s is outside 0 (default) .. %s", o.AmcheckTimeout, MaxAmcheckTimeout)
	}
	if o.RecoveryTimeout < 0 || o.RecoveryTimeout > MaxRecoveryTimeout {
		return fmt.Errorf("recovery timeout %s is outside 0 (default) .. %s", o.RecoveryTimeout, MaxRecoveryTimeout)
	}
	return nil
}

// chooseBackup picks the backup the way restore would, and pins it: the
// tablespace map is made from its manifest.
func chooseBackup(ctx context.Context, r *repo.Repository, o *Options) (repo.Summary, error) {
	backups, _, err := r.ListBackups(ctx)
	if err != nil {
		return repo.Summary{}, err
	}
	return restore.ChooseBackup(backups, o.BackupID, o.Target)
}

// checkBudget refuses a backup larger than MaxBytes, or than the free
// space of ScratchDir can take: its files, the WAL downloaded ahead and
// the WAL recovery keeps (max_wal_size).
func checkBudget(o Options, s repo.Summary) error {
	if o.MaxBytes > 0 && s.DataSize > o.MaxBytes {
		return fmt.Errorf("%w: backup %s holds %d bytes in the database, more than the configured maximum of %d", ErrBudget, s.ID, s.DataSize, o.MaxBytes)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(o.ScratchDir, &st); err != nil {
		return fmt.Errorf("scratch directory %s: %w", o.ScratchDir, err)
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	need := s.DataSize + max(o.WALPrefetchBytes, 0) + maxWALSize
	if need > free {
		return fmt.Errorf("%w: backup %s needs about %d bytes in %s (%d of files, up to %d of WAL), only %d are free", ErrBudget,
			s.ID, need, o.ScratchDir, s.DataSize, need-s.DataSize, free)
	}
	return nil
}

// checkScratchLocation refuses a scratch parent where a scratch directory
// would overlap the member's data directory or a running cluster's
// directories (restore checks the data directory itself again).
func checkScratchLocation(o Options) error {
	running := pg.RunningClusters()
	if o.MemberDataDir != "" {
		running = append(running, pg.RunningCluster{DataDir: o.MemberDataDir})
	}
	probe := filepath.Join(o.ScratchDir, scratchPrefix+"x")
	if c, used, ok := pg.UsedBy(probe, running); ok {
		what := fmt.Sprintf("the directory %s of a running cluster (postmaster pid %d)", used, c.PID)
		if c.PID == 0 {
			what = "this member's data directory " + used
		}
		return fmt.Errorf("scratch directory %s overlaps %s; choose another scratch directory", o.ScratchDir, what)
	}
	return nil
}

// makeScratch creates the scratch directory (checkScratchLocation first)
// and locks it (see removeStale) for the drill's life.
func makeScratch(o Options) (string, *os.File, error) {
	if err := checkScratchLocation(o); err != nil {
		return "", nil, err
	}
	dir, err := os.MkdirTemp(o.ScratchDir, scratchPrefix)
	if err != nil {
		return "", nil, fmt.Errorf("scratch directory: %w", err)
	}
	fail := func(err error) (string, *os.File, error) {
		os.RemoveAll(dir)
		return "", nil, err
	}
	// The socket lives here (trust auth): only this user may reach it.
	if err := os.Chmod(dir, 0o700); err != nil {
		return fail(fmt.Errorf("scratch directory: %w", err))
	}
	if len(socketPath(dir, 65535)) > maxSocketPath {
		return fail(fmt.Errorf("scratch directory %s: its path is too long for PostgreSQL's unix socket (at most %d bytes with the socket name); choose a shorter one", dir, maxSocketPath))
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockName), os.O_CREATE|os.O_RDWR, 0o600)
	if err == nil {
		if err = unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			lock.Close()
		}
	}
	if err != nil {
		return fail(fmt.Errorf("scratch directory: lock: %w", err))
	}
	return dir, lock, nil
}

// lockName is the file a running drill holds a flock on in its scratch
// directory.
const lockName = ".pgkeep-drill.lock"

// removeStale removes the scratch directories of drills that died without
// cleaning up (pgkeep killed): those in parent whose lock nobody holds and
// whose PostgreSQL does not run. A directory without a lock file (one
// being created this very moment) is left alone.
func removeStale(parent string, log *slog.Logger) {
	dirs, _ := filepath.Glob(filepath.Join(parent, scratchPrefix+"*"))
	for _, d := range dirs {
		f, err := os.OpenFile(filepath.Join(d, lockName), os.O_RDWR, 0)
		if err != nil {
			continue
		}
		free := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil
		if free && pg.PostmasterPID(filepath.Join(d, "data")) == 0 {
			if err := os.RemoveAll(d); err != nil {
				log.Warn("drill: could not remove the scratch directory of a drill that died", "dir", d, "err", err)
			} else {
				log.Warn("drill: removed the scratch directory of a drill that died", "dir", d)
			}
		}
		f.Close()
	}
}

// MarshalJSON writes the durations in seconds.
func (r Result) MarshalJSON() ([]byte, error) {
	type plain Result
	return json.Marshal(struct {
		plain
		RestoreToQuery float64 `json:"restore_to_query_seconds"`
		Restore        float64 `json:"restore_seconds"`
		Recovery       float64 `json:"recovery_seconds"`
		Checks         float64 `json:"checks_seconds"`
	}{plain(r), r.RestoreToQuery.Seconds(), r.Restore.Seconds(), r.Recovery.Seconds(), r.Checks.Seconds()})
}

// Text is the result for people: two lines.
func (r Result) Text() string {
	sql := "no sql check"
	if r.SQLChecked {
		sql = "sql check true"
	}
	return fmt.Sprintf("drill of backup %s succeeded: restore-to-query %s (restore %s, recovery %s), recovered to timeline %d at %s\n"+
		"checks: pg_amcheck on %d table(s), %s (%s); %.1f MiB downloaded; scratch directory removed\n",
		r.BackupID, r.RestoreToQuery.Round(time.Millisecond), r.Restore.Round(time.Millisecond), r.Recovery.Round(time.Millisecond),
		r.Timeline, r.LSN, r.AmcheckRelations, sql, r.Checks.Round(time.Millisecond), float64(r.Downloaded)/(1<<20))
}

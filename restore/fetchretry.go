package restore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/pgkeep/pgkeep/repo"
)

// ErrUnavailable marks errors of the storage itself (unreachable, timed out,
// refused, cut off mid-download): the repository could not say whether the
// object exists. Such a failure may heal, so wal-fetch retries it; it never
// means "not in the archive". Errors carry it when the repository was
// opened over storage.TagUnavailable.
var ErrUnavailable = repo.ErrUnavailable

// RecoveryMode is what PostgreSQL does with a restore_command that reports
// failure, which depends on why it runs the command.
type RecoveryMode int

const (
	// ModeUnknown: neither signal file was found (pg_rewind, a hand-made
	// call, a data directory pgkeep could not locate). Treated like archive
	// recovery: stopping is always safe, ending recovery early is not.
	ModeUnknown RecoveryMode = iota
	// ModeArchiveRecovery: recovery.signal. Any status below 126 means "no
	// such file", which ends recovery and promotes.
	ModeArchiveRecovery
	// ModeStandby: standby.signal. PostgreSQL retries (or streams) by
	// itself; a status of 126 or above would stop the standby.
	ModeStandby
)

func (m RecoveryMode) String() string {
	switch m {
	case ModeArchiveRecovery:
		return "archive recovery"
	case ModeStandby:
		return "standby"
	}
	return "unknown"
}

// DataDirOf is the data directory restore_command writes dest into.
// PostgreSQL runs restore_command in the data directory with a relative %p
// (pg_wal/RECOVERYXLOG); pg_rewind passes <datadir>/pg_wal/<name>. A dest
// whose directory is not called pg_wal leaves cwd.
func DataDirOf(dest, cwd string) string {
	if !filepath.IsAbs(dest) {
		dest = filepath.Join(cwd, dest)
	}
	if dir := filepath.Dir(dest); filepath.Base(dir) == "pg_wal" {
		return filepath.Dir(dir)
	}
	return cwd
}

// DetectRecoveryMode looks for the signal files in dataDir. standby.signal
// wins over recovery.signal, as in PostgreSQL.
func DetectRecoveryMode(dataDir string) RecoveryMode {
	if fileExists(filepath.Join(dataDir, "standby.signal")) {
		return ModeStandby
	}
	if fileExists(filepath.Join(dataDir, "recovery.signal")) {
		return ModeArchiveRecovery
	}
	return ModeUnknown
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}

// Outcome sorts a fetch error into what it means for PostgreSQL.
type Outcome int

const (
	Fetched     Outcome = iota
	Missing             // the repository answered: not archived
	Unavailable         // storage could not answer; may heal
	Failed              // a definite failure retrying cannot fix: key, corrupt object, local I/O, config
)

// Classify sorts err. Only an answer from the repository is Missing; only
// a storage error tagged by storage.TagUnavailable is Unavailable.
func Classify(err error) Outcome {
	switch {
	case err == nil:
		return Fetched
	case errors.Is(err, ErrWALNotFound):
		return Missing
	case errors.Is(err, ErrUnavailable):
		return Unavailable
	}
	return Failed
}

// Backoff between attempts: first retry after backoffMin, doubling up to
// backoffMax.
const (
	backoffMin = 250 * time.Millisecond
	backoffMax = 5 * time.Second
)

// RetryOptions bounds FetchWALRetry.
type RetryOptions struct {
	// RetryTime is how long Unavailable failures are retried; 0 tries once.
	RetryTime time.Duration
	Logger    *slog.Logger
	// sleep is time.Sleep with a context, swapped by tests.
	sleep func(context.Context, time.Duration) error
}

// FetchWALRetry opens the repository with open and fetches o.Name, retrying
// while the storage is unavailable for up to ro.RetryTime (an attempt in
// flight at the deadline runs to its own timeout). A repository that cannot
// be opened because storage is down is retried the same way.
func FetchWALRetry(ctx context.Context, open func(context.Context) (*repo.Repository, error), o FetchOptions, ro RetryOptions) (FetchResult, error) {
	log := ro.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sleep := ro.sleep
	if sleep == nil {
		sleep = sleepCtx
	}
	start := time.Now()
	deadline := start.Add(ro.RetryTime)
	wait := backoffMin
	var r *repo.Repository
	for attempt := 1; ; attempt++ {
		var (
			res FetchResult
			err error
		)
		if r == nil {
			r, err = open(ctx)
			if err != nil {
				r = nil
				err = fmt.Errorf("fetch %s: %w", o.Name, err)
			}
		}
		if r != nil {
			res, err = FetchWAL(ctx, r, o)
		}
		if Classify(err) != Unavailable {
			return res, err
		}
		left := time.Until(deadline)
		if left <= 0 || ctx.Err() != nil {
			if ro.RetryTime > 0 {
				err = fmt.Errorf("%w (gave up after %d attempts in %s)", err, attempt, time.Since(start).Round(time.Millisecond))
			}
			return res, err
		}
		d := min(wait, left)
		log.Warn("storage unavailable, retrying", "file", o.Name, "attempt", attempt, "retry_in", d, "err", err)
		if serr := sleep(ctx, d); serr != nil {
			return res, err
		}
		wait = min(2*wait, backoffMax)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

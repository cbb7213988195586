package restore

import (
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
)

// FetchFailure is a failed restore_command. What PostgreSQL must be told
// (its exit status) follows from the outcome and the recovery mode; the
// caller maps the two to a code (docs/wal.md, "Exit codes").
type FetchFailure struct {
	Outcome Outcome
	Mode    RecoveryMode
	Err     error
}

func (e *FetchFailure) Error() string { return e.Err.Error() }
func (e *FetchFailure) Unwrap() error { return e.Err }

// FailFetch wraps err, met by restore_command writing into dest ("" when
// unknown), as a FetchFailure. Every error of such a call goes through it,
// even a malformed command line or configuration: none may read as
// "missing".
func FailFetch(dest string, err error) error {
	return &FetchFailure{Outcome: Classify(err), Mode: FetchMode(dest), Err: err}
}

// FetchMode is the recovery mode of the data directory dest is in (dest ""
// or unknown: the current directory, where PostgreSQL runs
// restore_command).
func FetchMode(dest string) RecoveryMode {
	cwd, err := os.Getwd()
	if err != nil {
		return ModeUnknown
	}
	if dest == "" {
		return DetectRecoveryMode(cwd)
	}
	return DetectRecoveryMode(DataDirOf(dest, cwd))
}

// RecoveryFetchOptions is one restore_command call.
type RecoveryFetchOptions struct {
	Name string // %f
	Dest string // %p
	// Open opens the repository; it is called only when the file is not
	// already prefetched, and again on retries.
	Open func(context.Context) (*repo.Repository, error)
	// RetryTime is how long unavailable storage is retried in archive
	// recovery (wal.fetch_retry_time); standby mode tries once.
	RetryTime time.Duration
	Prefetch  PrefetchProcess
	Logger    *slog.Logger
}

// FetchForRecovery is restore_command: it takes the file from the prefetch
// directory when a prefetch (or a restore's bulk WAL download) put it
// there, else fetches it from the repository, and keeps the background
// prefetch going. Every error is a *FetchFailure.
func FetchForRecovery(ctx context.Context, o RecoveryFetchOptions) error {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// The prefetch directory is looked in even with wal.prefetch 0: a
	// restore's bulk WAL download fills it.
	prefetchDir := DefaultPrefetchDir(o.Dest)
	// A prefetched segment needs no repository: just a rename. A prefetch
	// that failed left nothing: fetch it here.
	if wf, err := pg.ParseWALFileName(o.Name); err == nil && ShouldPrefetch(wf, o.Dest) {
		if size, ok := TakePrefetched(prefetchDir, o.Name, o.Dest, log); ok {
			if err := o.Prefetch.maybeStart(o.Name, prefetchDir, size); err != nil {
				log.Warn("could not start prefetch", "err", err)
			}
			return nil
		}
	}
	// Only the slow path needs the recovery mode (getcwd and two stats).
	mode := FetchMode(o.Dest)
	// In standby mode PostgreSQL retries by itself (and may stream
	// meanwhile): answer at once rather than hold it in here.
	retry := o.RetryTime
	if mode == ModeStandby {
		retry = 0
	}
	res, err := FetchWALRetry(ctx, o.Open, FetchOptions{Name: o.Name, Dest: o.Dest, Logger: log},
		RetryOptions{RetryTime: retry, Logger: log})
	if err != nil {
		if Classify(err) == Missing {
			log.Debug("not in the archive", "file", o.Name)
		}
		return &FetchFailure{Outcome: Classify(err), Mode: mode, Err: err}
	}
	if ShouldPrefetch(res.File, o.Dest) {
		if err := o.Prefetch.maybeStart(o.Name, prefetchDir, res.Size); err != nil {
			log.Warn("could not start prefetch", "err", err)
		}
	}
	return nil
}

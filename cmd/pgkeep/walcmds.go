package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/pgkeep/pgkeep/archive"
	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/restore"
	"github.com/pgkeep/pgkeep/storage"
)

func newWALPushCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "wal-push PATH",
		Short: "Archive one WAL file (PostgreSQL's archive_command)",
		Long: `wal-push stores the WAL file at PATH in the repository and exits 0 only once it is
durably stored. Pushing a file identical to the archived one succeeds; a different
file under an archived name fails and the archived copy is kept.

Up to wal.push_ahead other files that PostgreSQL has marked .ready are pushed in
the same call, so the archiver's next calls return at once.`,
		Example: `  # postgresql.conf
  archive_mode = on
  archive_command = 'pgkeep wal-push %p'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.load(); err != nil {
				return err
			}
			lazyGC()
			ctx := cmd.Context()
			r, err := openWALRepo(ctx, a.cfg)
			if err != nil {
				return fmt.Errorf("push %s: %w", filepath.Base(args[0]), err)
			}
			return archive.PushWAL(ctx, r, archive.PushOptions{
				Path:             args[0],
				PushAhead:        a.cfg.WAL.PushAhead,
				Concurrency:      a.cfg.UploadConcurrency,
				SystemIdentifier: a.systemIdentifier(args[0]),
				Logger:           a.log,
			})
		},
	}
}

// lazyGC suits the short processes PostgreSQL starts per WAL file: they
// allocate a few segments' worth of memory and exit, so collecting garbage
// on the way only costs time. The limit keeps a collection possible should
// one run allocate far more than that.
func lazyGC() {
	debug.SetGCPercent(-1)
	debug.SetMemoryLimit(512 << 20)
}

// systemIdentifier reads pg_control of the data directory walPath belongs
// to: PostgreSQL runs archive_command in the data directory with a relative
// %p. Unknown (0) disables the check rather than failing the archiver.
func (a *app) systemIdentifier(walPath string) uint64 {
	dir := a.cfg.PGData
	if dir == "" {
		if filepath.IsAbs(walPath) {
			dir = filepath.Dir(filepath.Dir(walPath))
		} else {
			dir = "."
		}
	}
	id, err := pg.SystemIdentifier(dir)
	if err != nil {
		a.log.Debug("system identifier unknown", "err", err)
		return 0
	}
	return id
}

func newWALFetchCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "wal-fetch NAME PATH",
		Short: "Restore one archived WAL file (PostgreSQL's restore_command)",
		Long: `wal-fetch writes the archived WAL file NAME to PATH (via a temporary file, fsynced,
then renamed). Exit 1 without output means the repository answered that the file is
not in the archive, which PostgreSQL expects while it probes for files.

Storage errors are retried with backoff for wal.fetch_retry_time. A failure that
remains (storage still down, wrong key, corrupt object, bad configuration) exits 2
in standby mode (standby.signal: PostgreSQL retries by itself) and 255 otherwise,
which makes PostgreSQL stop archive recovery with a FATAL error instead of taking
the failure for the end of the archive and promoting early.

When PATH is PostgreSQL's recovery file (pg_wal/RECOVERYXLOG), a background
process fetches and verifies the next wal.prefetch segments of the timeline, so
sequential recovery does not wait one round trip per segment.`,
		Example: `  # postgresql.conf (or Patroni's recovery_conf)
  restore_command = 'pgkeep wal-fetch %f %p'`,
		Args: func(cmd *cobra.Command, args []string) error {
			if err := cobra.ExactArgs(2)(cmd, args); err != nil {
				// Even a malformed restore_command must not read as "missing".
				return &exitError{code: walFetchExitCode(restore.Failed, fetchMode("")), err: err}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			name, dest := args[0], args[1]
			mode := fetchMode(dest)
			fail := func(err error) error {
				o := restore.Classify(err)
				if o == restore.Missing {
					return &exitError{code: exitNotFound, err: err, quiet: true}
				}
				return &exitError{code: walFetchExitCode(o, mode), err: err}
			}
			if err := a.load(); err != nil {
				return fail(fmt.Errorf("fetch %s: %w", name, err))
			}
			lazyGC()
			ctx := cmd.Context()
			// The prefetch directory is looked in even with wal.prefetch 0:
			// a restore's bulk WAL download fills it.
			prefetchDir := restore.DefaultPrefetchDir(dest)
			// A prefetched segment needs no repository: just a rename. A
			// prefetch that failed left nothing: fetch it here.
			if wf, err := pg.ParseWALFileName(name); err == nil && restore.ShouldPrefetch(wf, dest) {
				if size, ok := restore.TakePrefetched(prefetchDir, name, dest, a.log); ok {
					if n := a.prefetchCount(size); n > 0 && needPrefetch(prefetchDir, n) {
						if err := a.startPrefetch(name, prefetchDir, size); err != nil {
							a.log.Warn("could not start prefetch", "err", err)
						}
					}
					return nil
				}
			}
			// In standby mode PostgreSQL retries by itself (and may stream
			// meanwhile): answer at once rather than hold it in here.
			retry := a.cfg.WAL.FetchRetryTime
			if mode == restore.ModeStandby {
				retry = 0
			}
			open := func(ctx context.Context) (*repo.Repository, error) {
				return openRepoWrapped(ctx, a.cfg, a.cfg.Compression.Level, storage.TagUnavailable)
			}
			res, err := restore.FetchWALRetry(ctx, open, restore.FetchOptions{Name: name, Dest: dest, Logger: a.log},
				restore.RetryOptions{RetryTime: retry, Logger: a.log})
			if err != nil {
				if restore.Classify(err) == restore.Missing {
					a.log.Debug("not in the archive", "file", name)
				}
				return fail(err)
			}
			if n := a.prefetchCount(res.Size); n > 0 && restore.ShouldPrefetch(res.File, dest) && needPrefetch(prefetchDir, n) {
				if err := a.startPrefetch(name, prefetchDir, res.Size); err != nil {
					a.log.Warn("could not start prefetch", "err", err)
				}
			}
			return nil
		},
	}
}

// fetchMode is the recovery mode of the data directory dest is in (dest ""
// or unknown: the current directory, where PostgreSQL runs
// restore_command).
func fetchMode(dest string) restore.RecoveryMode {
	cwd, err := os.Getwd()
	if err != nil {
		return restore.ModeUnknown
	}
	if dest == "" {
		return restore.DetectRecoveryMode(cwd)
	}
	return restore.DetectRecoveryMode(restore.DataDirOf(dest, cwd))
}

// walFetchExitCode is wal-fetch's exit status for a failed fetch.
// PostgreSQL takes any status below 126 for "no such file": in archive
// recovery that ends recovery and promotes, so only a repository's answer
// may say so (1). Every other failure stops archive recovery (255, which
// PostgreSQL makes FATAL) when it cannot be ridden out; in standby mode,
// where PostgreSQL retries by itself and a FATAL would stop the standby,
// it is 2. When the mode is unknown, stopping is the safe choice.
func walFetchExitCode(o restore.Outcome, mode restore.RecoveryMode) int {
	switch {
	case o == restore.Fetched:
		return exitOK
	case o == restore.Missing:
		return exitNotFound
	case mode == restore.ModeStandby:
		return exitUsage
	}
	return exitStopRecovery
}

// prefetchCount is how many segments of segSize bytes wal-fetch's prefetch
// keeps ahead: wal.prefetch, within restore.wal_prefetch_bytes (the disk
// budget of the prefetch directory) when that is set.
func (a *app) prefetchCount(segSize int64) int {
	n := a.cfg.WAL.Prefetch
	if b := int64(a.cfg.Restore.WALPrefetchBytes); b > 0 && pg.ValidSegmentSize(segSize) {
		n = min(n, int(b/segSize))
	}
	return n
}

// needPrefetch avoids starting a process per segment when the prefetch
// directory is still well stocked.
func needPrefetch(dir string, count int) bool {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return true
	}
	ready := 0
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") && len(e.Name()) == 24+1+64 {
			ready++
		}
	}
	return ready <= count/2
}

// startPrefetch re-executes this very binary (by its own path, not through
// PATH) detached from PostgreSQL's process group, so restore_command returns
// at once and the prefetch survives it.
func (a *app) startPrefetch(after, dir string, segSize int64) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(dir, "prefetch.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := []string{"wal-prefetch", "--after", after, "--dir", dir, "--segment-size", strconv.FormatInt(segSize, 10)}
	if a.configFlag != "" {
		args = append([]string{"--config", a.configFlag}, args...)
	}
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	return cmd.Process.Release()
}

func newWALPrefetchCmd(a *app) *cobra.Command {
	var o restore.PrefetchOptions
	cmd := &cobra.Command{
		Use:     "wal-prefetch",
		Short:   "Fetch the WAL segments after --after into --dir (started by wal-fetch)",
		Hidden:  true,
		Example: `  pgkeep wal-prefetch --after 000000010000000000000010 --dir pg_wal/pgkeep/prefetch --segment-size 16777216`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.load(); err != nil {
				return err
			}
			ctx := cmd.Context()
			r, err := openRepo(ctx, a.cfg)
			if err != nil {
				return err
			}
			o.Count = a.prefetchCount(o.SegmentSize)
			o.Concurrency = a.cfg.DownloadConcurrency
			o.Logger = a.log
			return restore.Prefetch(ctx, r, o)
		},
	}
	cmd.Flags().StringVar(&o.After, "after", "", "segment just fetched")
	cmd.Flags().StringVar(&o.Dir, "dir", "", "prefetch directory")
	cmd.Flags().Int64Var(&o.SegmentSize, "segment-size", pg.DefaultSegmentSize, "WAL segment size in bytes")
	cmd.MarkFlagRequired("after")
	cmd.MarkFlagRequired("dir")
	return cmd
}

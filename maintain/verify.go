package maintain

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/pgkeep/pgkeep/internal/human"
	"github.com/pgkeep/pgkeep/repo"
)

// VerifyOptions is `pgkeep verify`.
type VerifyOptions struct {
	// BackupID is the backup to verify; "": every backup.
	BackupID string
	// CacheDir keeps the WAL objects found good (verify.cache_dir; "": the
	// user's cache directory); NoCache reads every object again.
	CacheDir    string
	NoCache     bool
	Concurrency int
	JSON        bool
	Out         io.Writer
	Logger      *slog.Logger
}

// Verify re-reads the backups and the archived WAL, prints each problem
// (as text or JSON), and fails when there is any.
func Verify(ctx context.Context, r *repo.Repository, o VerifyOptions) error {
	vo := repo.VerifyOptions{Concurrency: o.Concurrency, Logger: o.Logger}
	if o.BackupID != "" {
		if err := repo.ValidBackupID(o.BackupID); err != nil {
			return err
		}
		if _, err := r.ReadSummary(ctx, o.BackupID); errors.Is(err, repo.ErrBackupNotFound) {
			return err
		}
		vo.BackupIDs = []string{o.BackupID}
	} else {
		ids, err := r.BackupIDs(ctx)
		if err != nil {
			return fmt.Errorf("verify: %w", err)
		}
		if len(ids) == 0 {
			return errors.New("verify: the repository holds no backup")
		}
		vo.BackupIDs = ids
	}
	if !o.NoCache {
		vo.Cache = OpenVerifyCache(o.CacheDir, o.Logger, r)
	}
	rep, err := r.Verify(ctx, vo)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	probs := rep.Problems
	if o.JSON {
		if probs == nil {
			probs = []repo.Problem{}
		}
		human.JSON(o.Out, probs)
	} else {
		for _, p := range probs {
			fmt.Fprintln(o.Out, p.String())
		}
		w := rep.WAL
		fmt.Fprintf(o.Out, "WAL: %d object(s) checked, %d read, %d from cache, %d bad\n", w.Objects, w.Read, w.Cached, w.Bad)
	}
	if len(probs) > 0 {
		return fmt.Errorf("verify: %d problem(s) found", len(probs))
	}
	if !o.JSON {
		fmt.Fprintf(o.Out, "verified %d backup(s) and %d WAL object(s): all data readable, WAL continuous\n", len(rep.Backups), rep.WAL.Objects)
	}
	return nil
}

// OpenVerifyCache opens verify's WAL cache for r in dir (verify.cache_dir;
// "": the user's cache directory). Without one verify still works, reading
// every WAL object.
func OpenVerifyCache(dir string, log *slog.Logger, r *repo.Repository) *repo.VerifyCache {
	if dir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			log.Warn("no verify cache: every WAL object is read", "err", err)
			return nil
		}
		dir = filepath.Join(base, "pgkeep")
	}
	c, err := repo.OpenVerifyCache(dir, r)
	if err != nil {
		log.Warn("no verify cache: every WAL object is read", "err", err)
		return nil
	}
	return c
}

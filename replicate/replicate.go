// Package replicate is pgkeep's side of Patroni: the create_replica_methods
// entry that builds a replica from the repository instead of from the
// primary, and the custom bootstrap method that creates a new cluster from
// a backup (optionally to a point in time). Both are restore.Backup with
// the settings Patroni expects; docs/patroni.md has the contract.
package replicate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/restore"
)

// Args are the words Patroni appends to a method's command: --key=value
// each, in any order. Known keys land in fields; the rest in Other.
type Args struct {
	Scope      string
	Role       string
	DataDir    string
	ConnString string
	Other      map[string]string
}

// ParseArgs reads Patroni's argv. Besides the keys it knows, a method's own
// YAML keys arrive as --key=value words (e.g. --keep_data=True); they are
// kept in Other, never an error. Words that are not --key=value are.
func ParseArgs(words []string, known map[string]*string) (Args, error) {
	a := Args{Other: map[string]string{}}
	fields := map[string]*string{"scope": &a.Scope, "role": &a.Role, "datadir": &a.DataDir, "connstring": &a.ConnString}
	for k, p := range known {
		fields[k] = p
	}
	for i := 0; i < len(words); i++ {
		w := words[i]
		key, val, hasVal := strings.Cut(strings.TrimPrefix(w, "--"), "=")
		if !strings.HasPrefix(w, "--") || key == "" {
			return a, fmt.Errorf("unexpected argument %q (Patroni passes --key=value words)", w)
		}
		key = strings.ReplaceAll(key, "-", "_")
		if !hasVal {
			// "--key value" as a human would type it; a flag with no value
			// at the end or before another flag is "true".
			if i+1 < len(words) && !strings.HasPrefix(words[i+1], "--") {
				val = words[i+1]
				i++
			} else {
				val = "true"
			}
		}
		if p, ok := fields[key]; ok {
			*p = val
			continue
		}
		a.Other[key] = val
	}
	return a, nil
}

// Options configures both methods.
type Options struct {
	DataDir string
	// BackupID and Target choose the backup (bootstrap); create-replica
	// always takes the newest.
	BackupID string
	Target   restore.Target // restore.ParseTarget's
	// RestoreCommand is written as restore_command (create-replica), so the
	// replica replays from the archive before it streams.
	RestoreCommand string
	// ConnString is the leader's (create-replica; "" with no leader): the
	// backup restored must be on the leader's timeline history.
	ConnString string
	Workers    int
	// WALPrefetchBytes and WALWorkers: restore.BackupOptions' (create-replica).
	WALPrefetchBytes int64
	WALWorkers       int
	Progress         restore.Progress
	Logger           *slog.Logger
}

// ReplicaRetryInterval is the wal_retrieve_retry_interval a new replica
// gets. PostgreSQL waits that long after a failed attempt to stream before
// the next (5 s by default), and a new replica's first attempt often fails:
// the leader creates the member's replication slot on its next HA cycle
// (up to loop_wait after the member appears), and a replica restored from
// the repository reaches the end of the archive sooner than that.
const ReplicaRetryInterval = time.Second

// CreateReplica restores the newest backup into o.DataDir as a standby
// whose restore_command is pgkeep wal-fetch. Files left by keep_data are
// reused when they match (delta restore). On failure the directory is left
// empty, so Patroni's next method starts clean and nothing half-written can
// be started.
func CreateReplica(ctx context.Context, r *repo.Repository, o Options) (restore.BackupResult, error) {
	log := logger(o.Logger)
	if err := checkDataDir(o.DataDir); err != nil {
		return restore.BackupResult{}, err
	}
	if err := requireBackup(ctx, r); err != nil {
		return restore.BackupResult{}, err
	}
	// Patroni's replica follows the leader's timeline; a backup of an
	// abandoned one (after a rollback) would restore fine and then never
	// start. Without a leader, the newest archived timeline is followed.
	var tli uint32
	if o.ConnString != "" {
		var err error
		if tli, err = pg.ServerTimeline(ctx, o.ConnString, 10*time.Second); err != nil {
			log.Warn("could not ask the leader for its timeline; following the newest archived one", "err", err)
		} else {
			log.Info("leader's timeline", "timeline", tli)
		}
	}
	nonEmpty := !isEmpty(o.DataDir)
	res, err := restore.Backup(ctx, r, restore.BackupOptions{
		PGData:           o.DataDir,
		Timeline:         tli,
		BackupID:         "latest",
		Standby:          true,
		RetryInterval:    ReplicaRetryInterval,
		Delta:            nonEmpty,
		RestoreCommand:   o.RestoreCommand,
		Workers:          o.Workers,
		WALPrefetchBytes: o.WALPrefetchBytes,
		WALWorkers:       o.WALWorkers,
		Progress:         o.Progress,
		Logger:           log,
	})
	if err != nil {
		if errors.Is(err, restore.ErrPostmasterRunning) {
			return res, err // never touch a live cluster's files
		}
		cleanup(o.DataDir, log)
		return res, err
	}
	return res, nil
}

// Bootstrap restores the backup chosen by o.BackupID / o.Target into an
// empty o.DataDir and leaves recovery to Patroni: it writes backup_label
// (and tablespace_map) but no recovery settings or signal file, because
// Patroni writes recovery.signal and its recovery_conf after we exit.
func Bootstrap(ctx context.Context, r *repo.Repository, o Options) (restore.BackupResult, error) {
	log := logger(o.Logger)
	if err := checkDataDir(o.DataDir); err != nil {
		return restore.BackupResult{}, err
	}
	if !isEmpty(o.DataDir) {
		return restore.BackupResult{}, fmt.Errorf("bootstrap: %s is not empty; Patroni bootstraps into an empty data directory", o.DataDir)
	}
	if err := requireBackup(ctx, r); err != nil {
		return restore.BackupResult{}, err
	}
	res, err := restore.Backup(ctx, r, restore.BackupOptions{
		PGData:           o.DataDir,
		BackupID:         o.BackupID,
		Target:           o.Target,
		NoRecoveryConfig: true,
		Workers:          o.Workers,
		Progress:         o.Progress,
		Logger:           log,
	})
	if err != nil {
		cleanup(o.DataDir, log)
		return res, err
	}
	return res, nil
}

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

func checkDataDir(dir string) error {
	if dir == "" {
		return errors.New("no --datadir given (Patroni passes --datadir=DIR)")
	}
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("--datadir %q must be an absolute path", dir)
	}
	return nil
}

// requireBackup fails early, with the reason Patroni's log should show,
// when the repository has no backup at all.
func requireBackup(ctx context.Context, r *repo.Repository) error {
	backups, _, err := r.ListBackups(ctx)
	if err != nil {
		return err
	}
	if len(backups) == 0 {
		return errors.New("no backup in the repository yet (take one with pgkeep backup); falling back to the next method")
	}
	return nil
}

func isEmpty(dir string) bool {
	entries, err := os.ReadDir(dir)
	return err != nil || len(entries) == 0
}

// cleanup empties dir after a failed restore so that no partial cluster is
// left for Patroni (or a person) to start.
func cleanup(dir string, log *slog.Logger) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			log.Warn("could not remove a partly restored file", "path", filepath.Join(dir, e.Name()), "err", err)
		}
	}
}

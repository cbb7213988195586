package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pgkeep/pgkeep/replicate"
	"github.com/pgkeep/pgkeep/restore"
)

// Patroni calls these with its own argv conventions (design.md, "Patroni
// integration"): --key=value words in any order, including keys pgkeep does
// not know. Cobra's flag parsing would reject those, so the words are read
// by replicate.ParseArgs instead.

func newCreateReplicaCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "create-replica --datadir=DIR [--scope=S --role=replica --connstring=DSN ...]",
		Short: "Patroni create_replica_methods entry: build a replica from the repository",
		Long: `create-replica restores the newest backup into --datadir as a standby whose
restore_command is pgkeep wal-fetch, so the new replica replays the archive and then
streams from the leader (Patroni adds standby.signal and primary_conninfo after it
exits 0). Files kept by keep_data are reused when they match the backup. With no
leader (--connstring= empty) it works from the repository alone.

It exits non-zero with a one-line reason when there is no backup or anything fails,
leaving --datadir empty, so Patroni falls back to its next method. Unknown
--key=value words (Patroni passes the method's own YAML keys) are ignored.`,
		Example: `  # patroni.yml
  postgresql:
    create_replica_methods: [pgkeep, basebackup]
    pgkeep:
      command: pgkeep --config /etc/pgkeep/pgkeep.yml create-replica
      keep_data: true
      no_leader: true`,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, words []string) error {
			var configPath, help string
			args, err := replicate.ParseArgs(words, map[string]*string{"config": &configPath, "help": &help})
			if help != "" {
				return cmd.Help()
			}
			if err != nil {
				return &configError{err.Error()}
			}
			if configPath != "" {
				a.configPath = configPath
			}
			if err := a.load(); err != nil {
				return err
			}
			for k := range args.Other {
				a.log.Debug("ignoring Patroni argument", "key", k)
			}
			ctx := cmd.Context()
			r, err := openRepo(ctx, a.cfg)
			if err != nil {
				return fmt.Errorf("create-replica: %w", err)
			}
			source := "the leader"
			if args.ConnString == "" {
				source = "the repository alone (no leader)"
			}
			a.log.Info("pgkeep create-replica starting", "scope", args.Scope, "datadir", args.DataDir, "wal_source", source)
			res, err := replicate.CreateReplica(ctx, r, replicate.Options{
				DataDir:          args.DataDir,
				RestoreCommand:   a.restoreCommand(),
				ConnString:       args.ConnString,
				Workers:          a.cfg.DownloadConcurrency,
				WALPrefetchBytes: int64(a.cfg.Restore.WALPrefetchBytes),
				WALWorkers:       a.cfg.DownloadConcurrency,
				Progress:         newProgress("create-replica", a.log),
				Logger:           a.log,
			})
			if err != nil {
				return fmt.Errorf("create-replica: %w", err)
			}
			// Patroni's log shows this line; the tests look for it.
			fmt.Fprintf(os.Stderr, "pgkeep create-replica: restored backup %s into %s (%d files written, %d kept, %s downloaded)\n",
				res.BackupID, args.DataDir, res.FilesWritten, res.FilesKept, humanBytes(res.BytesDownloaded))
			return nil
		},
	}
}

func newBootstrapCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "bootstrap --datadir=DIR [--scope=S] [--backup=ID] [--target-time=T | --target-lsn=L | --target-xid=X | --target-name=N]",
		Short: "Patroni custom bootstrap method: create a new cluster from a backup",
		Long: `bootstrap restores a backup into the empty --datadir for Patroni's custom bootstrap:
the newest backup, --backup=ID, or the newest backup that ended before the target.
It writes backup_label but no recovery settings: Patroni writes recovery.signal and
the method's recovery_conf (restore_command, and the same recovery_target_* as given
here) after it exits 0, starts PostgreSQL and waits for it to promote.

To clone another cluster, point --config at a pgkeep.yml whose repository is the
source's, and use the same config in recovery_conf's restore_command.`,
		Example: `  # patroni.yml
  bootstrap:
    method: pgkeep
    pgkeep:
      command: pgkeep --config /etc/pgkeep/source.yml bootstrap --target-time=2026-11-22T14:02:00Z
      recovery_conf:
        restore_command: pgkeep --config /etc/pgkeep/source.yml wal-fetch %f %p
        recovery_target_time: '2026-11-22T14:02:00Z'
        recovery_target_action: promote
        recovery_target_timeline: latest`,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, words []string) error {
			var configPath, help, backupID string
			var ts restore.TargetSpec
			args, err := replicate.ParseArgs(words, map[string]*string{
				"config": &configPath, "help": &help, "backup": &backupID,
				"target_time": &ts.Time, "target_lsn": &ts.LSN, "target_xid": &ts.XID, "target_name": &ts.Name,
				"target_timeline": &ts.Timeline,
			})
			if help != "" {
				return cmd.Help()
			}
			if err != nil {
				return &configError{err.Error()}
			}
			t, err := restore.ParseTarget(ts)
			if err != nil {
				return &configError{err.Error()}
			}
			if configPath != "" {
				a.configPath = configPath
			}
			if err := a.load(); err != nil {
				return err
			}
			for k := range args.Other {
				a.log.Debug("ignoring Patroni argument", "key", k)
			}
			ctx := cmd.Context()
			r, err := openRepo(ctx, a.cfg)
			if err != nil {
				return fmt.Errorf("bootstrap: %w", err)
			}
			a.log.Info("pgkeep bootstrap starting", "scope", args.Scope, "datadir", args.DataDir,
				"backup", backupID, "target", strings.Join(targetWords(t), " "))
			res, err := replicate.Bootstrap(ctx, r, replicate.Options{
				DataDir:  args.DataDir,
				BackupID: backupID,
				Target:   t,
				Workers:  a.cfg.DownloadConcurrency,
				Progress: newProgress("bootstrap", a.log),
				Logger:   a.log,
			})
			if err != nil {
				return fmt.Errorf("bootstrap: %w", err)
			}
			fmt.Fprintf(os.Stderr, "pgkeep bootstrap: restored backup %s into %s (%d files, %s downloaded); recovery follows Patroni's recovery_conf\n",
				res.BackupID, args.DataDir, res.FilesWritten, humanBytes(res.BytesDownloaded))
			return nil
		},
	}
}

func targetWords(t restore.Target) []string {
	var w []string
	for _, kv := range t.Settings() {
		w = append(w, kv[0]+"="+kv[1])
	}
	return w
}

package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/pgkeep/pgkeep/drill"
	"github.com/pgkeep/pgkeep/restore"
)

func newDrillCmd(a *app) *cobra.Command {
	var (
		o        drill.Options
		tf       *targetFlags
		maxBytes string
		asJSON   bool
	)
	cmd := &cobra.Command{
		Use:   "drill",
		Short: "Rehearse a restore: restore, recover, check and remove a scratch copy",
		Long: `drill restores the newest backup (or --backup) into a scratch directory under
--scratch-dir, starts PostgreSQL there on a free 127.0.0.1 port with archiving off
(its socket in the scratch directory, TCP refusing everyone), lets it recover to the
end of the archive (or the target) and promote, runs pg_amcheck on a random sample
of tables (--amcheck-tables, within --amcheck-timeout) and the --sql check, which
must return true, then stops the copy and removes the scratch directory, also when
it fails or is interrupted. It prints the restore-to-query time: from the start of
the restore to the first query the promoted copy answered.

It never writes into the repository nor into this member's data directory or any
running cluster's; a backup larger than --max-bytes or than the free space of the
scratch directory is refused before anything is written. Run it as the PostgreSQL
user. See docs/drill.md.`,
		Example: `  pgkeep drill
  pgkeep drill --backup 20261122T180000Z-1a2b --sql 'SELECT count(*) > 0 FROM orders'
  pgkeep drill --target-time '2026-11-22 17:59:00+00' --scratch-dir /srv/drill --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.load(); err != nil {
				return err
			}
			t, err := tf.parse()
			if err != nil {
				return err
			}
			o.Target = t
			if o.ScratchDir != "" && !filepath.IsAbs(o.ScratchDir) {
				return &configError{fmt.Sprintf("--scratch-dir %q must be an absolute path", o.ScratchDir)}
			}
			if o.AmcheckTimeout <= 0 || o.RecoveryTimeout <= 0 {
				return &configError{"--amcheck-timeout and --recovery-timeout must be positive"}
			}
			if err := o.CheckBounds(); err != nil {
				return &configError{err.Error()}
			}
			if maxBytes != "" {
				n, err := parseBytes(maxBytes)
				if err != nil {
					return &configError{"--max-bytes: " + err.Error()}
				}
				o.MaxBytes = int64(n)
			}
			ctx := cmd.Context()
			r, err := openRepo(ctx, a.cfg)
			if err != nil {
				return err
			}
			a.drillDefaults(&o)
			res, err := drill.Run(ctx, r, o)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(res)
			}
			_, err = fmt.Fprint(out, res.Text())
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.BackupID, "backup", "", "backup ID or latest (default: newest backup before the target)")
	tf = addTargetFlags(f, false)
	f.StringVar(&o.SQL, "sql", "", "query run on the promoted copy; it must return one row of one column, true")
	f.StringVar(&o.Database, "database", "postgres", "database the --sql check runs in")
	f.StringVar(&o.User, "user", "", "role the checks connect as (default: the OS user)")
	f.StringVar(&o.ScratchDir, "scratch-dir", "", "directory the scratch directory is made in (default: $TMPDIR or /tmp)")
	f.StringVar(&maxBytes, "max-bytes", "", "refuse a backup larger than this in the database (e.g. 50GB; default: only the free space)")
	f.IntVar(&o.AmcheckRelations, "amcheck-tables", drill.DefaultAmcheckRelations, "tables pg_amcheck checks, with their indexes (-1: none)")
	f.DurationVar(&o.AmcheckTimeout, "amcheck-timeout", drill.DefaultAmcheckTimeout, "time limit of pg_amcheck (and of the sql check)")
	f.DurationVar(&o.RecoveryTimeout, "recovery-timeout", drill.DefaultRecoveryTimeout, "time limit from starting the copy to its promotion")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

// drillDefaults fills what the configuration decides: binaries, the
// member's data directory, the copy's restore_command and restore's
// resources.
func (a *app) drillDefaults(o *drill.Options) {
	o.BinDir = a.cfg.Postgres.BinDir
	o.MemberDataDir = a.cfg.PGData
	o.RestoreCommand = a.restoreCommand()
	o.Workers = a.cfg.DownloadConcurrency
	o.WALPrefetchBytes, o.WALWorkers = int64(a.cfg.Restore.WALPrefetchBytes), a.cfg.DownloadConcurrency
	o.Logger = a.log
}

// drillJobOptions are a drill job's keys (daemon.jobs) as drill options.
func drillJobOptions(j DaemonJob) (drill.Options, error) {
	o := drill.Options{ScratchDir: j.ScratchDir, SQL: j.SQL, AmcheckRelations: j.AmcheckTables}
	spec := restore.TargetSpec{Time: j.TargetTime, LSN: j.TargetLSN, Name: j.TargetName}
	switch j.Target {
	case "":
	case "immediate":
		spec.Immediate = true
	default:
		return o, fmt.Errorf("target %q: only immediate (or target_time, target_lsn, target_name)", j.Target)
	}
	t, err := restore.ParseTarget(spec)
	if err != nil {
		return o, err
	}
	o.Target = t
	if o.ScratchDir != "" && !filepath.IsAbs(o.ScratchDir) {
		return o, fmt.Errorf("scratch_dir %q is not an absolute path", o.ScratchDir)
	}
	if err := o.CheckBounds(); err != nil {
		return o, fmt.Errorf("amcheck_tables: %w", err)
	}
	if j.MaxBytes != "" {
		n, err := parseBytes(j.MaxBytes)
		if err != nil {
			return o, fmt.Errorf("max_bytes: %v", err)
		}
		o.MaxBytes = int64(n)
	}
	return o, nil
}

// Command pgkeep archives WAL, takes and restores base backups, and
// provisions Patroni replicas from its repository. This package is the only
// place that reads flags, config files and the environment.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	// The zone database, for daemon.timezone on hosts (and the FROM
	// scratch image) without /usr/share/zoneinfo.
	_ "time/tzdata"

	"github.com/spf13/cobra"

	"github.com/pgkeep/pgkeep/repo"
)

// Exit codes (docs/wal.md). PostgreSQL treats 126 and above, and death by
// signal, as fatal for archive and restore commands, so all stay below but
// exitStopRecovery, which wal-fetch uses precisely for that.
const (
	exitOK       = 0
	exitFailure  = 1 // the operation failed (wal-fetch: file not in the archive)
	exitUsage    = 2 // bad flags or configuration; wal-fetch in standby mode: any failure but "not found"
	exitNotFound = 1
	// exitStopRecovery: wal-fetch could not get a file that may exist; in
	// archive recovery PostgreSQL must stop (FATAL) rather than promote.
	// Not 126 or 127, which PostgreSQL's log calls "command not
	// executable" and "command not found".
	exitStopRecovery = 255
)

// version and commit are set by the linker (-X main.version=...
// -X main.commit=...; see the Makefile).
var (
	version = "dev"
	commit  = ""
)

// exitError carries a specific exit code up to main.
type exitError struct {
	code  int
	err   error
	quiet bool // print nothing (wal-fetch of a missing file)
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit %d", e.code)
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

// app carries what every command needs once flags are parsed.
type app struct {
	configPath string
	// configFlag is what --config said, passed on to child processes.
	configFlag string
	cfg        Config
	log        *slog.Logger
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	endProfile := startProfile()
	code := run(ctx, os.Args[1:])
	endProfile()
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string) int {
	a := &app{}
	root := newRootCmd(a)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var ee *exitError
	code := exitFailure
	quiet := false
	var ce *configError
	switch {
	case errors.As(err, &ee):
		// The command chose its code (wal-fetch, for PostgreSQL).
		code, quiet = ee.code, ee.quiet
	case isUsageError(err), errors.As(err, &ce):
		code = exitUsage
	}
	if !quiet {
		// One line: PostgreSQL logs and cron mails read better that way.
		fmt.Fprintf(os.Stderr, "pgkeep: %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return code
}

func isUsageError(err error) bool {
	s := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "accepts ", "requires at least", "invalid argument", "flag needs an argument", "required flag"} {
		if strings.Contains(s, p) {
			return true
		}
	}
	return false
}

// extraCommands are added by files built with tags (gendocs.go).
var extraCommands []func(*app) *cobra.Command

func newRootCmd(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:   "pgkeep",
		Short: "Backup, WAL archiving and point-in-time recovery for PostgreSQL and Patroni",
		Long: `pgkeep keeps a PostgreSQL cluster recoverable: it is PostgreSQL's archive_command
and restore_command, and stores WAL zstd-compressed and optionally age-encrypted
in a local directory or an S3 bucket.

Configuration comes from --config, else $PGKEEP_CONFIG, else /etc/pgkeep/pgkeep.yml;
every key can be overridden by a PGKEEP_* environment variable
(encryption.identity_file -> PGKEEP_ENCRYPTION_IDENTITY_FILE); pgkeep config show
prints the effective values and where each came from.`,
		Example: `  pgkeep repo init
  archive_command = 'pgkeep wal-push %p'
  restore_command = 'pgkeep wal-fetch %f %p'`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&a.configPath, "config", "", "config file (default $PGKEEP_CONFIG or "+DefaultConfigPath+")")
	root.AddCommand(
		newVersionCmd(),
		newKeygenCmd(a),
		newRepoCmd(a),
		newWALPushCmd(a),
		newWALFetchCmd(a),
		newWALPrefetchCmd(a),
		newBackupCmd(a),
		newRestoreCmd(a),
		newDeleteCmd(a),
		newInfoCmd(a),
		newVerifyCmd(a),
		newDrillCmd(a),
		newStatusCmd(a),
		newCheckCmd(a),
		newRecoveryCmd(a),
		newCreateReplicaCmd(a),
		newBootstrapCmd(a),
		newDaemonCmd(a),
		newConfigCmd(a),
	)
	for _, c := range extraCommands {
		root.AddCommand(c(a))
	}
	return root
}

// load reads the configuration and sets up logging; commands call it first.
func (a *app) load() error {
	a.configFlag = a.configPath
	path, explicit := a.configPath, a.configPath != ""
	if !explicit {
		if p := os.Getenv("PGKEEP_CONFIG"); p != "" {
			path, explicit = p, true
		} else {
			path = DefaultConfigPath
		}
	}
	a.configPath = path
	cfg, err := LoadConfig(path, explicit, os.Environ())
	if err != nil {
		return err
	}
	a.cfg = cfg
	a.log = newLogger(cfg.Log)
	warnUnknownEnv(cfg, a.log)
	warnFileModes(cfg, path, a.log)
	setMemoryLimit(cfg)
	return nil
}

func newLogger(c LogConfig) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print pgkeep's version, commit, Go version and repository format",
		Long: `version prints the release, the commit it was built from, the Go toolchain and
platform, and the repository format version this binary writes and reads
(docs/format.md). It reads no configuration.`,
		Example: "  pgkeep version",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "pgkeep %s\n", version)
			fmt.Fprintf(out, "commit: %s\n", buildCommit())
			fmt.Fprintf(out, "go: %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
			fmt.Fprintf(out, "repository format: %d\n", repo.FormatVersion)
			return nil
		},
	}
}

// buildCommit is the commit set by the linker, else the one the Go
// toolchain recorded, else "unknown".
func buildCommit() string {
	if commit != "" {
		return commit
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}

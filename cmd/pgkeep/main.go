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
	"github.com/pgkeep/pgkeep/restore"
)

// Exit codes by meaning: the one table of them (docs/wal.md, docs/backup.md;
// exitCode maps error kinds to them). PostgreSQL treats 126 and above, and
// death by signal, as fatal for archive and restore commands, so all stay
// below but exitStopRecovery, which wal-fetch uses precisely for that.
const (
	exitOK     = 0
	exitFailed = 1 // the operation failed; the message says why
	exitConfig = 2 // bad command line or configuration
	// exitMissing: wal-fetch, the repository answered that the file is not
	// archived (PostgreSQL probes for files that do not exist yet).
	exitMissing = 1
	// exitStandbyRetry: wal-fetch in standby mode, any other failure;
	// PostgreSQL retries by itself, and 126+ would stop the standby.
	exitStandbyRetry = 2
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

// app carries what every command needs once flags are parsed.
type app struct {
	configPath string
	// configFlag is what --config said, passed on to child processes.
	configFlag string
	cfg        Config
	log        *slog.Logger
	// loadFailed turns a configuration error into the error a command
	// reports (wal-fetch: the code PostgreSQL needs); nil: as is.
	loadFailed map[*cobra.Command]func(args []string, err error) error
}

// configAnnotation marks the commands the root's PersistentPreRunE loads
// the configuration for (withConfig).
const configAnnotation = "pgkeep.io/loads-config"

// withConfig marks cmd as one that runs with the configuration loaded:
// the root loads it once before RunE, so RunE reads a.cfg and a.log.
func withConfig(cmd *cobra.Command) *cobra.Command {
	if cmd.Annotations == nil {
		cmd.Annotations = map[string]string{}
	}
	cmd.Annotations[configAnnotation] = "yes"
	return cmd
}

// onLoadError makes a configuration error of cmd reported as wrap says.
func (a *app) onLoadError(cmd *cobra.Command, wrap func(args []string, err error) error) {
	if a.loadFailed == nil {
		a.loadFailed = map[*cobra.Command]func([]string, error) error{}
	}
	a.loadFailed[cmd] = wrap
}

// prepare is the root's PersistentPreRunE: the one place the configuration
// is loaded, for the commands marked withConfig. The Patroni commands take
// their flags as Patroni's words (DisableFlagParsing), so they read
// --config themselves and call loadFrom.
func (a *app) prepare(cmd *cobra.Command, args []string) error {
	if cmd.Annotations[configAnnotation] == "" {
		return nil
	}
	// Cobra checks required flags after this hook; a missing one was
	// reported before a bad configuration, and still is.
	if err := cmd.ValidateRequiredFlags(); err != nil {
		return err
	}
	if err := cmd.ValidateFlagGroups(); err != nil {
		return err
	}
	if err := a.load(); err != nil {
		if wrap := a.loadFailed[cmd]; wrap != nil {
			return wrap(args, err)
		}
		return err
	}
	return nil
}

// loadFrom is load with the config path a command found in its own words
// ("" leaves --config).
func (a *app) loadFrom(configPath string) error {
	if configPath != "" {
		a.configPath = configPath
	}
	return a.load()
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
	code, quiet := exitCode(err)
	if !quiet {
		fmt.Fprintf(os.Stderr, "pgkeep: %s\n", errorLine(ctx, err))
	}
	return code
}

// errorLine is the one line printed for a failed command: PostgreSQL logs
// and cron mails read better that way. When a signal stopped the command,
// the line says so: whichever I/O the signal cut short reports only
// "context canceled", and that is not why the command failed.
func errorLine(ctx context.Context, err error) string {
	msg := strings.ReplaceAll(err.Error(), "\n", "; ")
	if ctx.Err() == nil {
		return msg
	}
	cause := context.Cause(ctx)
	if errors.Is(err, cause) || strings.Contains(msg, cause.Error()) {
		return msg
	}
	return cause.Error() + ": " + msg
}

// exitCode maps an error's kind to the exit status, and says whether the
// error is to be printed. Library packages return typed or sentinel
// errors; this is the only place that turns them into codes.
func exitCode(err error) (code int, quiet bool) {
	var fe *restore.FetchFailure
	var ce *configError
	switch {
	case errors.As(err, &fe):
		// wal-fetch answers PostgreSQL, which reads the code (docs/wal.md).
		return walFetchExitCode(fe.Outcome, fe.Mode), fe.Outcome == restore.Missing
	case isUsageError(err), errors.As(err, &ce):
		return exitConfig, false
	}
	return exitFailed, false
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
		return exitMissing
	case mode == restore.ModeStandby:
		return exitStandbyRetry
	}
	return exitStopRecovery
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
		SilenceUsage:      true,
		SilenceErrors:     true,
		PersistentPreRunE: a.prepare,
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

// load reads the configuration and sets up logging (through prepare or
// loadFrom; nothing else calls it).
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
			fmt.Fprintf(out, "repository format: 1..%d\n", repo.FormatVersion)
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

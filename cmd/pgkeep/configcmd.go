package main

import (
	"fmt"
	"io"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func newConfigCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Show or check the effective configuration",
		Long: `config shows the configuration pgkeep runs with and checks it, without
touching PostgreSQL, etcd or the repository.`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newConfigShowCmd(a), newConfigCheckCmd(a))
	return cmd
}

func newConfigShowCmd(a *app) *cobra.Command {
	return withConfig(&cobra.Command{
		Use:   "show",
		Short: "Print every setting, its effective value and where it came from",
		Long: `show prints every configuration key with its effective value and its source:
default, file (the config file read) or env (the PGKEEP_* variable that set it,
which wins over the file). Secrets are never shown: key and password files are
named by path and never read, and credentials in postgres.dsn or in URLs are
replaced by REDACTED. Run it with the environment the command in question runs
with (sudo -u postgres env ... pgkeep config show): archive_command sees the
postmaster's environment, not your shell's.`,
		Example: `  pgkeep config show
  sudo -u postgres PGKEEP_CONFIG=/etc/pgkeep/main.yml pgkeep config show`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return printConfig(cmd.OutOrStdout(), a.cfg, a.configPath)
		},
	})
}

func newConfigCheckCmd(a *app) *cobra.Command {
	return withConfig(&cobra.Command{
		Use:   "check",
		Short: "Validate the configuration and the files it names",
		Long: `check loads the configuration as every command does (an unknown or invalid key
exits 2) and makes sure the files it names exist and can be opened by this user:
encryption.identity_file, encryption.passphrase_file, etcd.password_file,
etcd.cacert, etcd.cert, etcd.key, and that pgdata is a directory when set. It
opens them without reading them. It warns, without failing, about PGKEEP_*
variables that are no setting and about key files others can read. It does not
connect to anything: pgkeep check proves the whole archiving path.`,
		Example: `  pgkeep config check
  sudo -u postgres pgkeep config check --config /etc/pgkeep/main.yml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkConfigFiles(a.cfg); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "ok: %s", a.cfg.sourceHint())
			if n := len(a.cfg.fromEnv); n > 0 {
				fmt.Fprintf(out, "; %d set by environment (%s)", n, strings.Join(a.cfg.fromEnv, ", "))
			}
			if n := len(a.cfg.unknownEnv); n > 0 {
				fmt.Fprintf(out, "; %d PGKEEP_* variable(s) ignored", n)
			}
			fmt.Fprintln(out)
			return nil
		},
	})
}

// checkConfigFiles makes sure every file the configuration names can be
// opened. Secret files are opened, never read.
func checkConfigFiles(cfg Config) error {
	files := []struct{ key, path string }{
		{"encryption.identity_file", cfg.Encryption.IdentityFile},
		{"encryption.passphrase_file", cfg.Encryption.PassphraseFile},
		{"etcd.password_file", cfg.Etcd.PasswordFile},
		{"etcd.cacert", cfg.Etcd.CACert},
		{"etcd.cert", cfg.Etcd.Cert},
		{"etcd.key", cfg.Etcd.Key},
	}
	for _, f := range files {
		if f.path == "" {
			continue
		}
		fh, err := os.Open(f.path)
		if err != nil {
			return &configError{fmt.Sprintf("%s %s: %v (%s)", f.key, f.path, unwrapPathError(err), cfg.sourceHint())}
		}
		fi, err := fh.Stat()
		fh.Close()
		if err != nil {
			return &configError{fmt.Sprintf("%s %s: %v", f.key, f.path, unwrapPathError(err))}
		}
		if !fi.Mode().IsRegular() {
			return &configError{fmt.Sprintf("%s %s: not a regular file", f.key, f.path)}
		}
	}
	if cfg.PGData != "" {
		if fi, err := os.Stat(cfg.PGData); err != nil {
			return &configError{fmt.Sprintf("pgdata %s: %v (%s)", cfg.PGData, unwrapPathError(err), cfg.sourceHint())}
		} else if !fi.IsDir() {
			return &configError{fmt.Sprintf("pgdata %s: not a directory", cfg.PGData)}
		}
	}
	return nil
}

// configSetting is one key of the effective configuration.
type configSetting struct {
	Key, Value, Source string
}

// configSettings lists every key in the order of Config, with its shown
// (redacted) value and its source.
func configSettings(cfg Config) []configSetting {
	fromEnv := map[string]bool{}
	for _, k := range cfg.fromEnv {
		fromEnv[k] = true
	}
	var out []configSetting
	var walk func(v reflect.Value, key, env string)
	walk = func(v reflect.Value, key, env string) {
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			tag := t.Field(i).Tag.Get("yaml")
			if tag == "" || tag == "-" {
				continue
			}
			k, e := joinKey(key, tag), env+"_"+strings.ToUpper(tag)
			if ft := t.Field(i).Type; ft.Kind() == reflect.Struct && ft != reflect.TypeOf(time.Duration(0)) {
				walk(v.Field(i), k, e)
				continue
			}
			src := "default"
			switch {
			case fromEnv[e]:
				src = "env " + e
			case cfg.fileKeys[k]:
				src = "file"
			}
			out = append(out, configSetting{Key: k, Value: showValue(k, v.Field(i)), Source: src})
		}
	}
	walk(reflect.ValueOf(cfg), "", "PGKEEP")
	return out
}

func printConfig(w io.Writer, cfg Config, path string) error {
	if cfg.file != "" {
		fmt.Fprintf(w, "# config file: %s\n", cfg.file)
	} else {
		fmt.Fprintf(w, "# config file: none (%s is absent): defaults and PGKEEP_* variables\n", path)
	}
	for _, k := range cfg.unknownEnv {
		fmt.Fprintf(w, "# ignored: %s is not a pgkeep setting\n", envName(k))
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tVALUE\tSOURCE")
	for _, s := range configSettings(cfg) {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Key, s.Value, s.Source)
	}
	return tw.Flush()
}

// showValue formats a setting for display, redacting credentials.
func showValue(key string, v reflect.Value) string {
	switch x := v.Interface().(type) {
	case time.Duration:
		return x.String()
	case string:
		switch key {
		case "postgres.dsn":
			x = redactDSN(x)
		case "repository", "s3.endpoint":
			x = redactConfigURL(x)
		}
		return quoteIfNeeded(x)
	case []string:
		parts := make([]string, len(x))
		for i, s := range x {
			if key == "etcd.endpoints" {
				s = redactConfigURL(s)
			}
			parts[i] = quoteIfNeeded(s)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case []DaemonJob:
		var jobs []string
		for _, j := range x {
			jobs = append(jobs, showJob(j))
		}
		return "[" + strings.Join(jobs, ", ") + "]"
	}
	return fmt.Sprint(v.Interface())
}

// showJob is a job as a YAML flow mapping of its non-zero keys.
func showJob(j DaemonJob) string {
	v := reflect.ValueOf(j)
	var kv []string
	for i := 0; i < v.NumField(); i++ {
		if v.Field(i).IsZero() {
			continue
		}
		tag := v.Type().Field(i).Tag.Get("yaml")
		kv = append(kv, tag+": "+showValue("", v.Field(i)))
	}
	return "{" + strings.Join(kv, ", ") + "}"
}

func quoteIfNeeded(s string) string {
	if s == "" || strings.ContainsAny(s[:1], "@&*!|>%`?-") || strings.ContainsAny(s, " \"'#,[]{}") || strings.IndexFunc(s, func(r rune) bool { return !strconv.IsPrint(r) }) >= 0 {
		return strconv.Quote(s)
	}
	return s
}

// redactConfigURL replaces the user information of a URL (user:password@) by
// REDACTED; anything that does not parse as a URL with a host is shown as
// is only when it cannot hold credentials.
func redactConfigURL(s string) string {
	if !strings.Contains(s, "@") {
		return s
	}
	if u, err := url.Parse(s); err == nil && u.User != nil {
		u.User = url.User("REDACTED")
		return u.String()
	}
	return "REDACTED"
}

var dsnPasswordRE = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)`)

// redactDSN removes passwords from a libpq connection string, in either
// form (key=value words or a postgres:// URL and its password parameter).
func redactDSN(s string) string {
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		u, err := url.Parse(s)
		if err != nil {
			return "REDACTED"
		}
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "REDACTED")
		}
		q := u.Query()
		if q.Has("password") {
			q.Set("password", "REDACTED")
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	return dsnPasswordRE.ReplaceAllString(s, "${1}REDACTED")
}

package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/pgkeep/pgkeep/daemon"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/restore"
	"github.com/pgkeep/pgkeep/scheduler"
)

// DefaultConfigPath is read when neither --config nor PGKEEP_CONFIG is set.
const DefaultConfigPath = "/etc/pgkeep/pgkeep.yml"

// DefaultRepository is used when the config names none.
const DefaultRepository = "file:///var/lib/pgkeep/repo"

// Config is pgkeep.yml. Every key can be overridden by the environment
// variable PGKEEP_<PATH> (upper case, nesting joined by "_"), e.g.
// encryption.identity_file -> PGKEEP_ENCRYPTION_IDENTITY_FILE.
// configs/pgkeep.yml documents every key.
type Config struct {
	Repository          string            `yaml:"repository"`
	S3                  S3Config          `yaml:"s3"`
	Compression         CompressionConfig `yaml:"compression"`
	Encryption          EncryptionConfig  `yaml:"encryption"`
	PGData              string            `yaml:"pgdata"`
	Postgres            PostgresConfig    `yaml:"postgres"`
	UploadConcurrency   int               `yaml:"upload_concurrency"`
	DownloadConcurrency int               `yaml:"download_concurrency"`
	WAL                 WALConfig         `yaml:"wal"`
	Restore             RestoreConfig     `yaml:"restore"`
	Etcd                EtcdConfig        `yaml:"etcd"`
	Patroni             PatroniConfig     `yaml:"patroni"`
	Log                 LogConfig         `yaml:"log"`
	Daemon              DaemonConfig      `yaml:"daemon"`
	Verify              VerifyConfig      `yaml:"verify"`
	Backup              BackupConfig      `yaml:"backup"`
	Storage             StorageConfig     `yaml:"storage"`
	Retention           RetentionConfig   `yaml:"retention"`

	// source says where the settings came from, for errors that may stem
	// from reading the wrong config (archive_command runs with
	// PostgreSQL's environment, not the shell's).
	source string
	// file is the config file that was read ("" for none); fromEnv the
	// PGKEEP_* variables that set keys.
	file    string
	fromEnv []string
	// fileKeys are the keys the config file set (a list, such as
	// daemon.jobs, counts as one key); unknownEnv the PGKEEP_* variables
	// that are no setting, for one warning.
	fileKeys   map[string]bool
	unknownEnv []string
}

type S3Config struct {
	Endpoint    string        `yaml:"endpoint"`
	Region      string        `yaml:"region"`
	PathStyle   bool          `yaml:"path_style"`
	Timeout     time.Duration `yaml:"timeout"`
	MaxAttempts int           `yaml:"max_attempts"`
	PartSizeMB  int           `yaml:"part_size_mb"`
}

type CompressionConfig struct {
	Level int `yaml:"level"`
}

type EncryptionConfig struct {
	Recipients     []string `yaml:"recipients"`
	IdentityFile   string   `yaml:"identity_file"`
	PassphraseFile string   `yaml:"passphrase_file"`
}

type PostgresConfig struct {
	DSN string `yaml:"dsn"`
	// BinDir holds postgres and pg_amcheck for drills; empty finds those
	// of the backup's major version.
	BinDir string `yaml:"bin_dir"`
}

type WALConfig struct {
	PushAhead        int `yaml:"push_ahead"`
	Prefetch         int `yaml:"prefetch"`
	CompressionLevel int `yaml:"compression_level"`
	// BlockMaps stores a block map beside each pushed segment, for
	// incremental backups that read only changed blocks (default true).
	BlockMaps bool `yaml:"block_maps"`
	// FetchRetryTime is how long wal-fetch retries storage errors before it
	// gives up (and, in archive recovery, stops recovery).
	FetchRetryTime time.Duration `yaml:"fetch_retry_time"`
}

// RestoreConfig is `pgkeep restore` and create-replica.
type RestoreConfig struct {
	// WALPrefetchBytes bounds the WAL a restore downloads into the restored
	// pg_wal/pgkeep/prefetch while it writes the base files (and what
	// wal-fetch's prefetch keeps there); 0 disables the download.
	WALPrefetchBytes int `yaml:"wal_prefetch_bytes"`
}

// MaxWALPrefetchBytes bounds restore.wal_prefetch_bytes (1 TiB).
const MaxWALPrefetchBytes = 1 << 40

// MaxFetchRetryTime bounds wal.fetch_retry_time: PostgreSQL waits inside
// restore_command all that time.
const MaxFetchRetryTime = time.Hour

// EtcdConfig is how to reach Patroni's etcd (v3 API). No endpoints means
// pgkeep does not use etcd.
type EtcdConfig struct {
	Endpoints []string `yaml:"endpoints"`
	CACert    string   `yaml:"cacert"`
	Cert      string   `yaml:"cert"`
	Key       string   `yaml:"key"`
	Username  string   `yaml:"username"`
	// PasswordFile holds the password: never on the command line, nor in
	// this file, nor in the environment.
	PasswordFile string        `yaml:"password_file"`
	DialTimeout  time.Duration `yaml:"dial_timeout"`
	// Prefix is where pgkeep keeps its locks and records; empty means
	// <patroni.namespace>pgkeep/<patroni.scope>.
	Prefix string `yaml:"prefix"`
}

// PatroniConfig names the Patroni cluster: its keys are under
// <namespace><scope>/ in etcd.
type PatroniConfig struct {
	Namespace string `yaml:"namespace"`
	Scope     string `yaml:"scope"`
}

// DaemonConfig is `pgkeep daemon`: scheduled jobs run on the right member
// of the Patroni cluster (configs/pgkeep.yml documents each key).
type DaemonConfig struct {
	// HA is how daemons agree on who runs a scheduled time: "patroni"
	// (etcd locks and records, the default) or "none" (one PostgreSQL
	// without Patroni: flocks and run records in LockDir).
	HA string `yaml:"ha"`
	// LockDir holds the locks and run records of daemon.ha: none.
	LockDir string `yaml:"lock_dir"`
	// Member is this node's Patroni member name (patroni.yml name);
	// empty means the host name.
	Member string `yaml:"member"`
	// Listen is the address of /metrics and /healthz; empty disables them.
	Listen string `yaml:"listen"`
	// Timezone of the schedules: an IANA name, "UTC" or "Local".
	Timezone        string        `yaml:"timezone"`
	LockTTL         time.Duration `yaml:"lock_ttl"`
	TakeoverTimeout time.Duration `yaml:"takeover_timeout"`
	// TakeoverStagger is added to takeover_timeout per rank below the
	// second (0: the scheduler's default).
	TakeoverStagger time.Duration `yaml:"takeover_stagger"`
	PollInterval    time.Duration `yaml:"poll_interval"`
	Retries         int           `yaml:"retries"`
	RetryDelay      time.Duration `yaml:"retry_delay"`
	// ArchiveCheckInterval is how often pg_stat_archiver is read for the
	// archive metrics.
	ArchiveCheckInterval time.Duration `yaml:"archive_check_interval"`
	Jobs                 []DaemonJob   `yaml:"jobs"`
}

// DaemonJob is one entry of daemon.jobs.
type DaemonJob struct {
	Name     string `yaml:"name"`
	Kind     string `yaml:"kind"` // backup, retention, verify or drill (daemon.ParseJobKind)
	Schedule string `yaml:"schedule"`
	RunOn    string `yaml:"run_on"`
	// MaxLag is bytes ("16MB", "1GB", "1048576"); default 16MB.
	MaxLag   string        `yaml:"max_lag"`
	Timezone string        `yaml:"timezone"`
	Window   time.Duration `yaml:"window"`
	// RetainFull / RetainDays: retention jobs, exactly one of them.
	RetainFull int `yaml:"retain_full"`
	RetainDays int `yaml:"retain_days"`
	// Checkpoint is fast or spread (backup jobs; default fast).
	Checkpoint string `yaml:"checkpoint"`
	// Type is full, incr or checksum (backup jobs; default incr once a
	// backup exists).
	Type string `yaml:"type"`
	// Drill jobs (docs/drill.md): where the copy goes, its size limit
	// (bytes, "0": none), the recovery target (default: the end of the
	// archive), the tables pg_amcheck checks (-1: none) and a SQL check.
	ScratchDir    string `yaml:"scratch_dir"`
	MaxBytes      string `yaml:"max_bytes"`
	Target        string `yaml:"target"`
	TargetTime    string `yaml:"target_time"`
	TargetLSN     string `yaml:"target_lsn"`
	TargetName    string `yaml:"target_name"`
	AmcheckTables int    `yaml:"amcheck_tables"`
	SQL           string `yaml:"sql"`
}

// DefaultMaxLag is a job's max_lag when it sets none.
const DefaultMaxLag = "16MB"

// parseBytes reads "1048576", "512kB", "16MB", "1GB" (powers of 1024).
func parseBytes(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	mult := uint64(1)
	for _, u := range []struct {
		suffix string
		m      uint64
	}{{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"kB", 1 << 10}, {"KB", 1 << 10}, {"B", 1}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(n), u.m
			break
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n > (1<<63)/mult {
		return 0, errors.New("not a size in bytes (e.g. 1048576, 16MB, 1GB)")
	}
	return n * mult, nil
}

// VerifyConfig is `pgkeep verify` (and the daemon's verify jobs).
type VerifyConfig struct {
	// CacheDir holds what verify remembers of WAL objects it read in full
	// (one file per repository); empty means $XDG_CACHE_HOME/pgkeep or
	// ~/.cache/pgkeep.
	CacheDir string `yaml:"cache_dir"`
}

// BackupConfig is `pgkeep backup`'s resource use.
type BackupConfig struct {
	// Concurrency is how many blocks are read, checked and compressed at
	// once; 0 means GOMAXPROCS (the CPUs the process may use, which
	// honours a container's CPU quota).
	Concurrency int `yaml:"concurrency"`
}

// StorageConfig applies to every request to the repository's storage.
type StorageConfig struct {
	// RateLimit bounds the bytes a second of object bodies uploaded and
	// downloaded by one pgkeep process together ("20MB", "1048576"); empty
	// or 0 means no limit.
	RateLimit string `yaml:"rate_limit"`
}

// RateLimitBytes is storage.rate_limit in bytes a second (0: none); the
// config was validated, so it parses.
func (s StorageConfig) RateLimitBytes() int64 {
	if s.RateLimit == "" {
		return 0
	}
	n, _ := parseBytes(s.RateLimit)
	return int64(n)
}

// RetentionConfig is the retention `pgkeep backup` applies after each
// successful backup: at most one of Full and Days; neither means none.
type RetentionConfig struct {
	Full int `yaml:"full"`
	Days int `yaml:"days"`
	// MaxRepackBytes bounds what `pgkeep delete` copies out of mostly
	// dead packs per run (a size, e.g. 1GB; "0" turns repacking off;
	// empty: repo.DefaultMaxRepackBytes).
	MaxRepackBytes string `yaml:"max_repack_bytes"`
}

// MaxRepackBytesValue is retention.max_repack_bytes in bytes.
func (r RetentionConfig) MaxRepackBytesValue() int64 {
	if r.MaxRepackBytes == "" {
		return repo.DefaultMaxRepackBytes
	}
	n, _ := parseBytes(r.MaxRepackBytes)
	return int64(n)
}

// MaxBackupConcurrency bounds backup.concurrency.
const MaxBackupConcurrency = 256

type LogConfig struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

func defaultConfig() Config {
	return Config{
		Repository:          DefaultRepository,
		S3:                  S3Config{Timeout: 60 * time.Second, MaxAttempts: 3, PartSizeMB: 8},
		Compression:         CompressionConfig{Level: 1}, // docs/backup.md "Compression level"
		UploadConcurrency:   4,
		DownloadConcurrency: 4,
		WAL:                 WALConfig{PushAhead: 8, Prefetch: 8, CompressionLevel: 1, BlockMaps: true, FetchRetryTime: 5 * time.Minute},
		Restore:             RestoreConfig{WALPrefetchBytes: restore.DefaultWALPrefetchBytes},
		Etcd:                EtcdConfig{DialTimeout: 5 * time.Second},
		Patroni:             PatroniConfig{Namespace: "/service/"},
		Log:                 LogConfig{Level: "info", Format: "text"},
		Daemon: DaemonConfig{HA: "patroni", LockDir: "/var/lib/pgkeep/daemon", Listen: "127.0.0.1:9187", Timezone: "UTC", LockTTL: 15 * time.Second,
			TakeoverTimeout: 60 * time.Second, PollInterval: 2 * time.Second, Retries: 3,
			RetryDelay: 60 * time.Second, ArchiveCheckInterval: 30 * time.Second},
	}
}

// configError is a bad or unknown key; the CLI exits 2 for it.
type configError struct{ msg string }

func (e *configError) Error() string { return e.msg }

var unknownFieldRE = regexp.MustCompile(`line (\d+): field (\S+) not found`)

// LoadConfig reads the file at path (explicit says whether the user named it;
// a missing default file just means "defaults"), then applies PGKEEP_*
// variables from env, then validates.
func LoadConfig(path string, explicit bool, env []string) (Config, error) {
	cfg := defaultConfig()
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
			if m := unknownFieldRE.FindStringSubmatch(err.Error()); m != nil {
				return cfg, &configError{fmt.Sprintf("config %s: unknown key %q at line %s", path, m[2], m[1])}
			}
			msg := strings.ReplaceAll(err.Error(), "\n", " ")
			return cfg, &configError{fmt.Sprintf("config %s: %s", path, strings.TrimPrefix(msg, "yaml: "))}
		}
		if err := checkScalarTypes(path, data, &cfg); err != nil {
			return cfg, err
		}
		cfg.fileKeys = setKeys(data, reflect.TypeOf(cfg))
		cfg.source = "settings from " + path
		cfg.file = path
	case os.IsNotExist(err) && !explicit:
		cfg.source = "no config file at " + path + ", so only defaults and PGKEEP_* variables apply"
	default:
		return cfg, &configError{fmt.Sprintf("config %s: %v", path, unwrapPathError(err))}
	}
	if err := applyEnv(&cfg, env); err != nil {
		return cfg, err
	}
	if err := cfg.validate(path); err != nil {
		return cfg, err
	}
	return cfg, nil
}

func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// envFields maps every PGKEEP_* name to the config field it sets.
func envFields(v reflect.Value, prefix, keyPrefix string, out map[string]envField) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		tag := t.Field(i).Tag.Get("yaml")
		if tag == "" || tag == "-" {
			continue
		}
		name := prefix + "_" + strings.ToUpper(tag)
		key := keyPrefix + tag
		if t.Field(i).Type.Kind() == reflect.Struct && t.Field(i).Type != reflect.TypeOf(time.Duration(0)) {
			envFields(v.Field(i), name, key+".", out)
			continue
		}
		out[name] = envField{key: key, v: v.Field(i)}
	}
}

type envField struct {
	key string
	v   reflect.Value
}

// envNotConfig are PGKEEP_* variables that are not config keys (nor is
// PGKEEP_TEST_*, which pgkeep's own test suite uses).
var envNotConfig = map[string]bool{"PGKEEP_CONFIG": true, "PGKEEP_CPUPROFILE": true, "PGKEEP_TRACE": true}

func applyEnv(cfg *Config, env []string) error {
	fields := map[string]envField{}
	envFields(reflect.ValueOf(cfg).Elem(), "PGKEEP", "", fields)
	var names []string
	vals := map[string]string{}
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(k, "PGKEEP_") || envNotConfig[k] || strings.HasPrefix(k, "PGKEEP_TEST_") {
			continue
		}
		names = append(names, k)
		vals[k] = v
	}
	sort.Strings(names)
	for _, k := range names {
		f, ok := fields[k]
		if !ok {
			// A warning, not an error: one stray variable in the
			// postmaster's environment must not stop archiving. A
			// misspelt key in the file is still an error.
			cfg.unknownEnv = append(cfg.unknownEnv, k)
			continue
		}
		if err := setField(f.v, vals[k]); err != nil {
			// The value is not echoed: it may be a secret.
			return &configError{fmt.Sprintf("environment variable %s (key %s): %v", k, f.key, err)}
		}
		cfg.fromEnv = append(cfg.fromEnv, k)
	}
	return nil
}

// warnUnknownEnv logs, once per process, each PGKEEP_* variable that is
// not a setting, with the setting it was probably meant to be.
func warnUnknownEnv(cfg Config, log *slog.Logger) {
	if len(cfg.unknownEnv) == 0 {
		return
	}
	fields := map[string]envField{}
	envFields(reflect.ValueOf(&cfg).Elem(), "PGKEEP", "", fields)
	for _, k := range cfg.unknownEnv {
		args := []any{"variable", envName(k)}
		if s := closestName(k, fields); s != "" {
			args = append(args, "did_you_mean", s)
		}
		log.Warn("ignoring an environment variable that is not a pgkeep setting", args...)
	}
}

// closestName is the setting's variable within two edits of k, if any.
func closestName(k string, fields map[string]envField) string {
	best, bestD := "", 3
	for name := range fields {
		if d := editDistance(k, name); d < bestD || (d == bestD && name < best) {
			best, bestD = name, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c++
			}
			cur[j] = min(c, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// envName is a variable name for a message: as is when it is a plain
// name, quoted when it holds anything else (a line break would split the
// one-line error).
func envName(k string) string {
	if strings.TrimLeft(k, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_") == "" {
		return k
	}
	return strconv.Quote(k)
}

func setField(v reflect.Value, s string) error {
	switch v.Interface().(type) {
	case time.Duration:
		d, err := time.ParseDuration(s)
		if err != nil {
			return errors.New("not a duration (e.g. 30s, 2m)")
		}
		v.SetInt(int64(d))
		return nil
	case []DaemonJob:
		// A YAML (or JSON) sequence, as under daemon.jobs in the file:
		// PGKEEP_DAEMON_JOBS='[{name: nightly, kind: backup, schedule: "@daily", run_on: primary}]'
		var jobs []DaemonJob
		dec := yaml.NewDecoder(strings.NewReader(s))
		dec.KnownFields(true)
		if err := dec.Decode(&jobs); err != nil && !errors.Is(err, io.EOF) {
			if m := unknownFieldRE.FindStringSubmatch(err.Error()); m != nil {
				return fmt.Errorf("unknown job key %q", m[2])
			}
			return errors.New("not a YAML list of jobs ([{name: nightly, kind: backup, schedule: \"@daily\", run_on: primary}])")
		}
		if err := checkScalarTypes("", []byte(s), &jobs); err != nil {
			return errors.New(strings.TrimPrefix(err.Error(), "config : "))
		}
		v.Set(reflect.ValueOf(jobs))
		return nil
	case []string:
		var parts []string
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				parts = append(parts, p)
			}
		}
		v.Set(reflect.ValueOf(parts))
		return nil
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Int:
		n, err := strconv.Atoi(s)
		if err != nil {
			return errors.New("not an integer")
		}
		v.SetInt(int64(n))
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return errors.New("not a boolean (true/false)")
		}
		v.SetBool(b)
	default:
		return fmt.Errorf("unsupported type %s", v.Type())
	}
	return nil
}

func (c *Config) validate(path string) error {
	bad := func(key, format string, args ...any) error {
		return &configError{fmt.Sprintf("config %s: %s: %s", path, key, fmt.Sprintf(format, args...))}
	}
	if err := checkRepositoryURL(c.Repository); err != nil {
		return bad("repository", "%v", err)
	}
	if c.Compression.Level < 0 || c.Compression.Level > 22 {
		return bad("compression.level", "%d is outside 0 (off) .. 22", c.Compression.Level)
	}
	if c.UploadConcurrency < 1 || c.UploadConcurrency > 256 {
		return bad("upload_concurrency", "%d is outside 1..256", c.UploadConcurrency)
	}
	if c.DownloadConcurrency < 1 || c.DownloadConcurrency > 256 {
		return bad("download_concurrency", "%d is outside 1..256", c.DownloadConcurrency)
	}
	if c.WAL.PushAhead < 0 || c.WAL.PushAhead > 1024 {
		return bad("wal.push_ahead", "%d is outside 0..1024", c.WAL.PushAhead)
	}
	if c.WAL.CompressionLevel < 0 || c.WAL.CompressionLevel > 22 {
		return bad("wal.compression_level", "%d is outside 0 (off) .. 22", c.WAL.CompressionLevel)
	}
	if c.WAL.Prefetch < 0 || c.WAL.Prefetch > 1024 {
		return bad("wal.prefetch", "%d is outside 0..1024", c.WAL.Prefetch)
	}
	if c.WAL.FetchRetryTime < 0 || c.WAL.FetchRetryTime > MaxFetchRetryTime {
		return bad("wal.fetch_retry_time", "%s is outside 0s..%s", c.WAL.FetchRetryTime, MaxFetchRetryTime)
	}
	if c.Restore.WALPrefetchBytes < 0 || c.Restore.WALPrefetchBytes > MaxWALPrefetchBytes {
		return bad("restore.wal_prefetch_bytes", "%d is outside 0 (off) .. %d", c.Restore.WALPrefetchBytes, MaxWALPrefetchBytes)
	}
	if c.S3.Timeout <= 0 {
		return bad("s3.timeout", "must be positive")
	}
	if c.S3.MaxAttempts < 1 {
		return bad("s3.max_attempts", "must be at least 1")
	}
	if c.S3.PartSizeMB < 5 || c.S3.PartSizeMB > 5120 {
		return bad("s3.part_size_mb", "%d is outside 5..5120", c.S3.PartSizeMB)
	}
	if c.Encryption.PassphraseFile != "" && len(c.Encryption.Recipients) > 0 {
		return bad("encryption", "set either recipients or passphrase_file, not both")
	}
	if c.Postgres.BinDir != "" && !filepath.IsAbs(c.Postgres.BinDir) {
		return bad("postgres.bin_dir", "%q is not an absolute path", c.Postgres.BinDir)
	}
	if c.PGData != "" && !filepath.IsAbs(c.PGData) {
		return bad("pgdata", "%q is not an absolute path", c.PGData)
	}
	if c.Verify.CacheDir != "" && !filepath.IsAbs(c.Verify.CacheDir) {
		return bad("verify.cache_dir", "%q is not an absolute path", c.Verify.CacheDir)
	}
	if c.Backup.Concurrency < 0 || c.Backup.Concurrency > MaxBackupConcurrency {
		return bad("backup.concurrency", "%d is outside 0 (GOMAXPROCS) .. %d", c.Backup.Concurrency, MaxBackupConcurrency)
	}
	if c.Storage.RateLimit != "" {
		n, err := parseBytes(c.Storage.RateLimit)
		if err != nil {
			return bad("storage.rate_limit", "%v (bytes a second)", err)
		}
		if n != 0 && n < 64<<10 {
			return bad("storage.rate_limit", "%d bytes a second is below 64kB (0 means no limit)", n)
		}
	}
	if r := c.Retention; r.Full < 0 || r.Full > repo.MaxRetainFull || r.Days < 0 || r.Days > repo.MaxRetainDays || (r.Full > 0 && r.Days > 0) {
		return bad("retention", "set at most one of full (1..%d backups) and days (1..%d)", repo.MaxRetainFull, repo.MaxRetainDays)
	}
	if c.Retention.MaxRepackBytes != "" {
		if _, err := parseBytes(c.Retention.MaxRepackBytes); err != nil {
			return bad("retention.max_repack_bytes", "%v", err)
		}
	}
	if err := c.validateEtcd(bad); err != nil {
		return err
	}
	if err := c.validateDaemon(bad); err != nil {
		return err
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return bad("log.level", "%q is not debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return bad("log.format", "%q is not text or json", c.Log.Format)
	}
	return nil
}

func (c *Config) validateEtcd(bad func(key, format string, args ...any) error) error {
	e := c.Etcd
	for i, ep := range e.Endpoints {
		// Endpoints are not echoed: a mistyped one may hold a password.
		if strings.Contains(ep, "@") {
			return bad(fmt.Sprintf("etcd.endpoints[%d]", i), "must not contain credentials; set etcd.username and etcd.password_file")
		}
		if scheme, _, ok := strings.Cut(ep, "://"); ok && scheme != "http" && scheme != "https" {
			return bad(fmt.Sprintf("etcd.endpoints[%d]", i), "scheme %q is not http or https", scheme)
		}
	}
	if e.DialTimeout <= 0 {
		return bad("etcd.dial_timeout", "must be positive")
	}
	if (e.Cert == "") != (e.Key == "") {
		return bad("etcd", "set both cert and key, or neither")
	}
	if (e.Username == "") != (e.PasswordFile == "") {
		return bad("etcd", "set both username and password_file, or neither")
	}
	if len(e.Endpoints) > 0 && c.Patroni.Scope == "" {
		return bad("patroni.scope", "required when etcd.endpoints is set (the scope in patroni.yml)")
	}
	if strings.Contains(c.Patroni.Scope, "/") {
		return bad("patroni.scope", "%q contains a slash", c.Patroni.Scope)
	}
	return nil
}

func (c *Config) validateDaemon(bad func(key, format string, args ...any) error) error {
	d := c.Daemon
	switch d.HA {
	case "patroni":
	case "none":
		if !filepath.IsAbs(d.LockDir) {
			return bad("daemon.lock_dir", "%q is not an absolute path", d.LockDir)
		}
	default:
		return bad("daemon.ha", "%q is not patroni or none", d.HA)
	}
	if _, err := time.LoadLocation(d.Timezone); err != nil || d.Timezone == "" {
		return bad("daemon.timezone", "%q is not a time zone (UTC, Local, Europe/Paris, ...)", d.Timezone)
	}
	for key, v := range map[string]time.Duration{"daemon.lock_ttl": d.LockTTL, "daemon.takeover_timeout": d.TakeoverTimeout,
		"daemon.poll_interval": d.PollInterval, "daemon.retry_delay": d.RetryDelay, "daemon.archive_check_interval": d.ArchiveCheckInterval} {
		if v <= 0 {
			return bad(key, "must be positive")
		}
	}
	if d.TakeoverStagger < 0 || d.TakeoverStagger > time.Hour {
		return bad("daemon.takeover_stagger", "%s is outside 0..1h", d.TakeoverStagger)
	}
	if d.LockTTL < 2*time.Second {
		return bad("daemon.lock_ttl", "%s is below 2s (etcd's minimum lease)", d.LockTTL)
	}
	if d.Retries < 1 || d.Retries > 100 {
		return bad("daemon.retries", "%d is outside 1..100", d.Retries)
	}
	if d.Listen != "" {
		if _, _, err := net.SplitHostPort(d.Listen); err != nil {
			return bad("daemon.listen", "%q is not host:port", d.Listen)
		}
	}
	seen := map[string]bool{}
	for i, j := range d.Jobs {
		key := fmt.Sprintf("daemon.jobs[%d]", i)
		if j.Name == "" || strings.ContainsAny(j.Name, "/ \t") || seen[j.Name] {
			return bad(key+".name", "%q: required, unique, without slashes or spaces", j.Name)
		}
		seen[j.Name] = true
		key = "daemon.jobs[" + j.Name + "]"
		kind, err := daemon.ParseJobKind(j.Kind)
		if err != nil {
			return bad(key+".kind", "%v", err)
		}
		if err := daemon.CheckJob(kind, daemon.JobSettings{RetainFull: j.RetainFull, RetainDays: j.RetainDays, SpreadCheckpoint: j.Checkpoint == "spread", BackupType: j.Type}); err != nil {
			return bad(key, "%v", err)
		}
		if kind == scheduler.JobDrill {
			if _, err := drillJobOptions(j); err != nil {
				return bad(key, "%v", err)
			}
		}
		if j.RunOn == "" && d.HA == "none" {
			// One PostgreSQL: where to run is not a question.
		} else if _, err := scheduler.ParsePolicy(j.RunOn); err != nil {
			return bad(key+".run_on", "%q is not primary, replica or prefer-replica", j.RunOn)
		}
		if _, err := scheduler.ParseSchedule(jobSchedule(d, j)); err != nil {
			return bad(key+".schedule", "%v", err)
		}
		if j.Timezone != "" {
			if _, err := time.LoadLocation(j.Timezone); err != nil {
				return bad(key+".timezone", "%q is not a time zone", j.Timezone)
			}
		}
		if j.MaxLag != "" {
			if _, err := parseBytes(j.MaxLag); err != nil {
				return bad(key+".max_lag", "%v", err)
			}
		}
		if j.Window < 0 {
			return bad(key+".window", "must not be negative")
		}
		if j.Checkpoint != "" && j.Checkpoint != "fast" && j.Checkpoint != "spread" {
			return bad(key+".checkpoint", "%q is not fast or spread", j.Checkpoint)
		}
	}
	return nil
}

// jobSchedule is the job's cron expression in its time zone.
func jobSchedule(d DaemonConfig, j DaemonJob) string {
	tz := j.Timezone
	if tz == "" {
		tz = d.Timezone
	}
	if strings.HasPrefix(j.Schedule, "CRON_TZ=") || strings.HasPrefix(j.Schedule, "TZ=") {
		return j.Schedule
	}
	return "CRON_TZ=" + tz + " " + j.Schedule
}

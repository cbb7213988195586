// Package pgtest runs real PostgreSQL 15 clusters for tests: initdb into a
// temporary directory, its own port on 127.0.0.1, started and stopped with
// pg_ctl. When the tests run as root, every PostgreSQL program runs as the
// postgres user (PostgreSQL refuses root) and the files it needs are given
// to that user.
package pgtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgkeep/pgkeep/internal/testport"
)

// BinDir holds the PostgreSQL 15 programs; PGKEEP_TEST_PG_BIN overrides it.
func BinDir() string {
	if d := os.Getenv("PGKEEP_TEST_PG_BIN"); d != "" {
		return d
	}
	return "/usr/lib/postgresql/15/bin"
}

var (
	credOnce sync.Once
	cred     *syscall.Credential
	credErr  error
)

// credential is the postgres user's when running as root, else nil.
func credential() (*syscall.Credential, error) {
	credOnce.Do(func() {
		if os.Geteuid() != 0 {
			return
		}
		u, err := user.Lookup("postgres")
		if err != nil {
			credErr = fmt.Errorf("running as root needs a postgres user: %w", err)
			return
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	})
	return cred, credErr
}

// AsPostgres makes cmd run as the postgres user when the test runs as root.
func AsPostgres(t testing.TB, cmd *exec.Cmd) {
	c, err := credential()
	if err != nil {
		t.Fatal(err)
	}
	if c != nil {
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		cmd.SysProcAttr.Credential = c
	}
}

// Chown gives path (recursively) to the postgres user when running as root.
func Chown(t testing.TB, path string) {
	c, err := credential()
	if err != nil {
		t.Fatal(err)
	}
	if c == nil {
		return
	}
	err = filepath.Walk(path, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(c.Uid), int(c.Gid))
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TempDir is a fresh directory the postgres user can use, removed at the
// end of the test. Its parents are world-searchable so postgres reaches it.
func TempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgkeep-test-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	Chown(t, dir)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// MkdirFor makes dir (0700) owned by the postgres user.
func MkdirFor(t testing.TB, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	Chown(t, dir)
	return dir
}

// FreePort returns a TCP port on 127.0.0.1 for a server (testport.Free).
func FreePort(t testing.TB) int {
	p, err := testport.Free()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Cluster is one PostgreSQL instance.
type Cluster struct {
	DataDir string
	Port    int
	LogFile string
	// Env is the postmaster's environment (and so archive_command's and
	// restore_command's), on top of a minimal PATH/HOME.
	Env     []string
	started bool
}

// Options for a new cluster.
type Options struct {
	// Conf lines appended to postgresql.conf.
	Conf []string
	Env  []string
	// InitDBArgs are added to initdb's (e.g. "--data-checksums").
	InitDBArgs []string
}

// Run runs a PostgreSQL program (as postgres when root) and fails the test
// with its output if it fails.
func Run(t testing.TB, env []string, name string, args ...string) string {
	t.Helper()
	out, err := RunErr(t, env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// RunErr is Run that returns the error.
func RunErr(t testing.TB, env []string, name string, args ...string) (string, error) {
	t.Helper()
	path := name
	if !strings.Contains(name, "/") {
		path = filepath.Join(BinDir(), name)
	}
	cmd := exec.Command(path, args...)
	cmd.Env = append(baseEnv(), env...)
	cmd.Dir = "/"
	AsPostgres(t, cmd)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func baseEnv() []string {
	return []string{"PATH=" + BinDir() + ":/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "LANG=C.UTF-8", "TZ=UTC"}
}

// New runs initdb in a new directory under parent and writes a
// postgresql.conf listening only on 127.0.0.1 at a free port.
func New(t testing.TB, parent string, o Options) *Cluster {
	t.Helper()
	c := &Cluster{DataDir: filepath.Join(parent, "data"), Env: o.Env}
	c.LogFile = filepath.Join(parent, "postgres.log")
	args := append([]string{"-D", c.DataDir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"}, o.InitDBArgs...)
	Run(t, nil, "initdb", args...)
	c.Configure(t, o.Conf...)
	t.Cleanup(func() { c.Stop(t) })
	return c
}

// Existing wraps a data directory made some other way (pg_basebackup,
// restore), giving it its own port and extra configuration.
func Existing(t testing.TB, dataDir string, o Options) *Cluster {
	t.Helper()
	c := &Cluster{DataDir: dataDir, Env: o.Env, LogFile: filepath.Join(filepath.Dir(dataDir), filepath.Base(dataDir)+".log")}
	Chown(t, dataDir)
	os.Chmod(dataDir, 0o700)
	c.Configure(t, o.Conf...)
	t.Cleanup(func() { c.Stop(t) })
	return c
}

// Configure picks a port and appends settings to postgresql.auto.conf-like
// include file (later lines win).
func (c *Cluster) Configure(t testing.TB, lines ...string) {
	t.Helper()
	if c.Port == 0 {
		c.Port = FreePort(t)
	}
	base := []string{
		"listen_addresses = '127.0.0.1'",
		fmt.Sprintf("port = %d", c.Port),
		"unix_socket_directories = ''",
		"fsync = off",
		"max_wal_senders = 5",
		"wal_level = replica",
		"logging_collector = off",
		"log_min_messages = info",
	}
	f, err := os.OpenFile(filepath.Join(c.DataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintf(f, "\n# pgkeep test settings\n%s\n%s\n", strings.Join(base, "\n"), strings.Join(lines, "\n"))
}

// Start starts the postmaster and waits until it accepts connections.
func (c *Cluster) Start(t testing.TB) {
	t.Helper()
	out, err := RunErr(t, c.Env, "pg_ctl", "-D", c.DataDir, "-l", c.LogFile, "-w", "-t", "120", "start")
	if err != nil {
		log, _ := os.ReadFile(c.LogFile)
		t.Fatalf("pg_ctl start: %v\n%s\n--- log ---\n%s", err, out, tail(string(log), 4000))
	}
	c.started = true
}

// Stop stops the postmaster (fast mode) if it runs.
func (c *Cluster) Stop(t testing.TB) {
	if !c.started {
		return
	}
	RunErr(t, nil, "pg_ctl", "-D", c.DataDir, "-m", "fast", "-w", "-t", "60", "stop")
	c.started = false
}

// Log returns the server log.
func (c *Cluster) Log() string {
	b, _ := os.ReadFile(c.LogFile)
	return string(b)
}

// DSN connects as the superuser over TCP.
func (c *Cluster) DSN() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", c.Port)
}

// Conn opens a connection that is closed at the end of the test.
func (c *Cluster) Conn(t testing.TB) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.DSN())
	if err != nil {
		t.Fatalf("connect: %v\n--- log ---\n%s", err, tail(c.Log(), 4000))
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// Exec runs SQL and fails the test on error.
func (c *Cluster) Exec(t testing.TB, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// WaitFor polls cond every 100ms until it is true or timeout passes.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		ok, err := cond()
		if ok {
			return
		}
		lastErr = err
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s (last error: %v)", timeout, what, lastErr)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// Tail is the end of s, for failure messages.
func Tail(s string, n int) string { return tail(s, n) }

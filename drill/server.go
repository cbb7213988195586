package drill

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// maxSocketPath is the longest unix socket path (sun_path less its NUL).
const maxSocketPath = 107

func socketPath(dir string, port int) string {
	return filepath.Join(dir, fmt.Sprintf(".s.PGSQL.%d", port))
}

// binaries are the PostgreSQL programs a drill runs.
type binaries struct {
	dir, postgres, amcheck string
}

var versionRE = regexp.MustCompile(`\(PostgreSQL\) (\d+)`)

// findBinaries finds the postgres of the backup's major version: in dir
// when given, else where packages put it, else pg_config's and PATH's.
func findBinaries(ctx context.Context, dir string, major int) (binaries, error) {
	var cands []string
	if dir != "" {
		cands = []string{dir}
	} else {
		cands = []string{fmt.Sprintf("/usr/lib/postgresql/%d/bin", major), fmt.Sprintf("/usr/pgsql-%d/bin", major)}
		if pc, err := exec.LookPath("pg_config"); err == nil {
			if out, err := exec.CommandContext(ctx, pc, "--bindir").Output(); err == nil {
				cands = append(cands, strings.TrimSpace(string(out)))
			}
		}
		if p, err := exec.LookPath("postgres"); err == nil {
			cands = append(cands, filepath.Dir(p))
		}
	}
	var seen []string
	for _, d := range cands {
		p := filepath.Join(d, "postgres")
		if _, err := os.Stat(p); err != nil {
			continue
		}
		out, err := exec.CommandContext(ctx, p, "--version").Output()
		m := versionRE.FindSubmatch(out)
		if err != nil || m == nil {
			seen = append(seen, d+" (unreadable version)")
			continue
		}
		if v, _ := strconv.Atoi(string(m[1])); v != major {
			seen = append(seen, fmt.Sprintf("%s (PostgreSQL %d)", d, v))
			continue
		}
		return binaries{dir: d, postgres: p, amcheck: filepath.Join(d, "pg_amcheck")}, nil
	}
	msg := fmt.Sprintf("no PostgreSQL %d binaries (the backup's version) in %s", major, strings.Join(cands, ", "))
	if len(seen) > 0 {
		msg += "; found only " + strings.Join(seen, ", ")
	}
	return binaries{}, errors.New(msg + "; set postgres.bin_dir")
}

// freePort is a TCP port on 127.0.0.1 nobody listens on now.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// server is the copy's postmaster, a child of this process.
type server struct {
	dir, pgdata, logFile string
	port                 int
	user                 string
	// maintDB is the database the copy was first reached in.
	maintDB string
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	log     *slog.Logger
}

// settings are the copy's: given on the command line, they win over
// everything in the backup's postgresql.auto.conf, and the backup's
// postgresql.conf (which may include files of the member, or name its pid
// file) is not read at all.
func settings(dir, pgdata string, port int, version int, o Options) [][2]string {
	s := [][2]string{
		{"config_file", filepath.Join(dir, "postgresql.conf")},
		{"hba_file", filepath.Join(dir, "pg_hba.conf")},
		{"ident_file", filepath.Join(dir, "pg_ident.conf")},
		{"data_directory", pgdata},
		{"listen_addresses", "127.0.0.1"},
		{"port", strconv.Itoa(port)},
		{"unix_socket_directories", dir},
		{"unix_socket_permissions", "0700"},
		// Never archive into the repository it came from.
		{"archive_mode", "off"},
		{"archive_command", ""},
		// Queries wait for the promotion: no hot standby, whose checks of
		// max_connections & co against the primary's could stop recovery.
		{"hot_standby", "off"},
		{"shared_buffers", o.SharedBuffers},
		{"max_wal_size", strconv.Itoa(maxWALSize>>20) + "MB"},
		{"huge_pages", "off"},
		// A copy must not act: no background jobs of extensions (pg_cron
		// & co), no vacuum, no waiting for synchronous standbys, no
		// replication from the member's primary.
		{"shared_preload_libraries", ""},
		{"session_preload_libraries", ""},
		{"local_preload_libraries", ""},
		{"autovacuum", "off"},
		// No JIT: CPU the drill does not need, and code generation the
		// daemon's systemd unit forbids (MemoryDenyWriteExecute).
		{"jit", "off"},
		{"synchronous_standby_names", ""},
		{"primary_conninfo", ""},
		{"primary_slot_name", ""},
		{"external_pid_file", ""},
		{"ssl", "off"},
		{"logging_collector", "off"},
		{"log_destination", "stderr"},
		{"cluster_name", "pgkeep-drill"},
	}
	if version >= 150000 {
		s = append(s, [2]string{"archive_library", ""})
	}
	return s
}

// startServer writes the copy's config files and starts its postmaster
// on a free loopback port.
func startServer(ctx context.Context, bins binaries, dir, pgdata string, version int, o Options, log *slog.Logger) (*server, error) {
	files := map[string]string{
		"postgresql.conf": "# pgkeep drill: every setting is on the postgres command line\n",
		// Only this user reaches the socket (its directory is 0700); TCP
		// on loopback answers nobody.
		"pg_hba.conf":   "local all all trust\nhost all all 0.0.0.0/0 reject\nhost all all ::/0 reject\n",
		"pg_ident.conf": "",
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			return nil, err
		}
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, fmt.Errorf("find a free port on 127.0.0.1: %w", err)
		}
		s, err := launch(bins, dir, pgdata, port, version, o, log)
		if err != nil {
			return nil, err
		}
		// Another process may have taken the port in the meantime.
		select {
		case <-s.exited:
			if strings.Contains(s.logText(), "could not bind") || strings.Contains(s.logText(), "could not create any TCP/IP sockets") {
				lastErr = s.failure("PostgreSQL could not listen")
				continue
			}
			return nil, s.failure("PostgreSQL stopped at start")
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
			s.stop()
			return nil, ctx.Err()
		}
		return s, nil
	}
	return nil, lastErr
}

func launch(bins binaries, dir, pgdata string, port, version int, o Options, log *slog.Logger) (*server, error) {
	s := &server{dir: dir, pgdata: pgdata, port: port, user: o.User, logFile: filepath.Join(dir, "postgres.log"), exited: make(chan struct{}), log: log}
	args := []string{"-D", pgdata}
	for _, kv := range settings(dir, pgdata, port, version, o) {
		args = append(args, "-c", kv[0]+"="+kv[1])
	}
	lf, err := os.OpenFile(s.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	cmd := exec.Command(bins.postgres, args...)
	cmd.Dir = pgdata
	cmd.Stdout, cmd.Stderr = lf, lf
	// Its own process group (stopped as one if it must be killed), and
	// gone with this process should it die.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGQUIT}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	s.cmd = cmd
	go func() {
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()
	log.Info("drill: PostgreSQL started", "pid", cmd.Process.Pid, "port", port)
	return s, nil
}

// stop shuts the copy down: fast, then immediate, then killed with its
// process group. Nothing of it runs when stop returns nil.
func (s *server) stop() error {
	if s.cmd == nil {
		return nil
	}
	pid := s.cmd.Process.Pid
	for _, step := range []struct {
		sig  syscall.Signal
		wait time.Duration
	}{{syscall.SIGINT, 2 * time.Minute}, {syscall.SIGQUIT, 15 * time.Second}} {
		select {
		case <-s.exited:
			return nil
		default:
		}
		syscall.Kill(pid, step.sig)
		select {
		case <-s.exited:
			return nil
		case <-time.After(step.wait):
			s.log.Warn("drill: PostgreSQL did not stop in time", "signal", step.sig, "wait", step.wait)
		}
	}
	syscall.Kill(-pid, syscall.SIGKILL)
	select {
	case <-s.exited:
		return nil
	case <-time.After(15 * time.Second):
		return fmt.Errorf("postmaster %d survives SIGKILL", pid)
	}
}

func (s *server) logText() string {
	b, _ := os.ReadFile(s.logFile)
	return string(b)
}

// failure is an error for the postmaster's end: what, with the lines of
// its log that say why (FATAL/PANIC, and restore_command's pgkeep line,
// which names the object it could not read).
func (s *server) failure(what string) error {
	if s.cmd != nil && s.cmd.ProcessState != nil {
		what += " (" + s.cmd.ProcessState.String() + ")"
	}
	why := logReasons(s.logText())
	if why == "" {
		return errors.New(what)
	}
	return fmt.Errorf("%s: %s", what, why)
}

// logReasons picks, from a server log, the last line of pgkeep's own
// (restore_command) and the last FATAL or PANIC.
func logReasons(text string) string {
	var pgkeep, fatal string
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(l, "pgkeep: "):
			pgkeep = l
		case strings.Contains(l, "FATAL:") || strings.Contains(l, "PANIC:"):
			_, msg, _ := strings.Cut(l, ": ")
			if i := strings.Index(l, "FATAL:"); i >= 0 {
				msg = l[i:]
			} else if i := strings.Index(l, "PANIC:"); i >= 0 {
				msg = l[i:]
			}
			fatal = msg
		}
	}
	var parts []string
	for _, p := range []string{pgkeep, fatal} {
		if p != "" {
			if len(p) > 300 {
				p = p[:300] + "…"
			}
			parts = append(parts, p)
		}
	}
	return strings.Join(parts, "; ")
}

// connect opens a connection to db over the scratch directory's socket.
func (s *server) connect(ctx context.Context, db string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable connect_timeout=5 application_name=pgkeep-drill",
		dsnQuote(s.dir), s.port, dsnQuote(s.user), dsnQuote(db)))
	if err != nil {
		return nil, err
	}
	return pgx.ConnectConfig(ctx, cfg)
}

func dsnQuote(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// waitPromoted waits until the copy has recovered and promoted, and
// returns a connection to it.
func (s *server) waitPromoted(ctx context.Context, timeout time.Duration) (*pgx.Conn, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		select {
		case <-s.exited:
			return nil, s.failure("PostgreSQL stopped before recovery ended")
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-deadline.C:
			return nil, fmt.Errorf("recovery did not end within %s (last: %v)", timeout, last)
		case <-tick.C:
		}
		s.maintDB = "postgres"
		conn, err := s.connect(ctx, s.maintDB)
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "3D000" { // no database postgres
			s.maintDB = "template1"
			conn, err = s.connect(ctx, s.maintDB)
		}
		if err != nil {
			last = err
			if errors.As(err, &pe) && pe.Code != "57P03" { // not "starting up": a real refusal
				return nil, fmt.Errorf("connect to the restored copy as %q: %w", s.user, err)
			}
			continue
		}
		var inRecovery bool
		if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil || inRecovery {
			conn.Close(context.Background())
			last = err
			continue
		}
		return conn, nil
	}
}

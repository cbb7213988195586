// Package etcdtest runs a real single-member etcd server on 127.0.0.1 for
// tests, optionally with TLS (client certificates required) and with
// authentication. There is no mock: tests that need etcd fail (never skip)
// when it is not installed; `make deps` installs Debian's etcd-server.
package etcdtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/pgkeep/pgkeep/internal/testport"
)

// readyTimeout bounds a start: etcd elects itself in about a second; the
// rest is headroom for a loaded CI machine.
const readyTimeout = 30 * time.Second

// Options for a server.
type Options struct {
	// TLS serves clients over https with certificates from a fresh CA and
	// requires client certificates (--client-cert-auth).
	TLS bool
	// Auth enables authentication with user "root" and Server.Password.
	Auth bool
}

// Server is one etcd process and its data directory.
type Server struct {
	// Endpoint is the client URL, http(s)://127.0.0.1:Port.
	Endpoint string
	Port     int
	Dir      string // temp dir: data/, certs, etcd.log
	// Certs are the CA and certificates when Options.TLS is set.
	Certs *Certs
	// Username and Password of the root user when Options.Auth is set.
	Username, Password string

	opts     Options
	bin      string
	peerPort int
	logPath  string
	cmd      *exec.Cmd
	exited   chan struct{}
}

// Binary finds etcd: $PGKEEP_TEST_ETCD, `etcd` on PATH, or /usr/bin/etcd.
func Binary() (string, error) {
	if p := os.Getenv("PGKEEP_TEST_ETCD"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("etcd"); err == nil {
		return p, nil
	}
	if fi, err := os.Stat("/usr/bin/etcd"); err == nil && !fi.IsDir() {
		return "/usr/bin/etcd", nil
	}
	return "", errors.New("etcd not found: run `make deps` (installs etcd-server) or set PGKEEP_TEST_ETCD to an etcd binary")
}

// Start runs a fresh etcd; t.Cleanup stops it and removes its data.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "pgkeep-etcd-")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Dir: dir, opts: o, bin: bin, logPath: filepath.Join(dir, "etcd.log")}
	t.Cleanup(func() {
		s.kill()
		os.RemoveAll(dir)
	})
	if o.TLS {
		s.Certs = NewCerts(t, filepath.Join(dir, "certs"))
	}
	// Free ports are released before etcd binds them, so another process
	// can take one in between: try a few.
	for attempt := 1; ; attempt++ {
		if s.Port, err = testport.Free(); err == nil {
			s.peerPort, err = testport.Free()
		}
		if err != nil {
			t.Fatal(err)
		}
		scheme := "http"
		if o.TLS {
			scheme = "https"
		}
		s.Endpoint = fmt.Sprintf("%s://127.0.0.1:%d", scheme, s.Port)
		err := s.start()
		if err == nil {
			break
		}
		if !errors.Is(err, errExited) || attempt == 3 {
			t.Fatalf("%v\netcd log (%s):\n%s", err, s.logPath, s.LogTail())
		}
	}
	if o.Auth {
		s.enableAuth(t)
	}
	return s
}

var errExited = errors.New("etcd exited")

func (s *Server) start() error {
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "--- %s: starting on %s\n", time.Now().Format(time.RFC3339), s.Endpoint)
	peer := fmt.Sprintf("http://127.0.0.1:%d", s.peerPort)
	args := []string{
		"--name", "pgkeep-test",
		"--data-dir", filepath.Join(s.Dir, "data"),
		"--listen-client-urls", s.Endpoint,
		"--advertise-client-urls", s.Endpoint,
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", "pgkeep-test=" + peer,
		"--initial-cluster-state", "new",
		"--initial-cluster-token", "pgkeep-test",
		"--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
	}
	if s.Certs != nil {
		args = append(args,
			"--cert-file", s.Certs.ServerCert, "--key-file", s.Certs.ServerKey,
			"--trusted-ca-file", s.Certs.CA, "--client-cert-auth")
	}
	cmd := exec.Command(s.bin, args...)
	// etcd reads ETCD_* variables as flags; none may leak in.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start etcd %s: %w", s.bin, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.cmd, s.exited = cmd, exited

	client := &http.Client{Timeout: time.Second}
	if s.Certs != nil {
		client.Transport = &http.Transport{TLSClientConfig: s.Certs.ClientTLS()}
	}
	deadline := time.Now().Add(readyTimeout)
	for {
		resp, err := client.Get(s.Endpoint + "/health")
		if err == nil {
			var body [256]byte
			n, _ := resp.Body.Read(body[:])
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(string(body[:n]), `"true"`) {
				return nil
			}
		}
		select {
		case <-exited:
			s.cmd = nil
			return fmt.Errorf("%w while starting on %s (%v)", errExited, s.Endpoint, cmd.ProcessState)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.kill()
			return fmt.Errorf("etcd not healthy on %s after %s", s.Endpoint, readyTimeout)
		}
	}
}

// enableAuth creates root with a password and turns authentication on.
func (s *Server) enableAuth(t testing.TB) {
	t.Helper()
	s.Username, s.Password = "root", "pgkeep-etcd-root-secret-do-not-log"
	cli := s.connect(t, "", "")
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.UserAdd(ctx, s.Username, s.Password); err != nil {
		t.Fatalf("etcd user add root: %v", err)
	}
	if _, err := cli.UserGrantRole(ctx, s.Username, "root"); err != nil {
		t.Fatalf("etcd grant root: %v", err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		t.Fatalf("etcd auth enable: %v", err)
	}
}

// AddUser creates a user whose role may read (and, with write, also
// write) keys with the given prefix.
func (s *Server) AddUser(t testing.TB, name, password, prefix string, write bool) {
	t.Helper()
	cli := s.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	perm := clientv3.PermissionType(clientv3.PermRead)
	if write {
		perm = clientv3.PermissionType(clientv3.PermReadWrite)
	}
	steps := []func() error{
		func() error { _, err := cli.RoleAdd(ctx, name); return err },
		func() error {
			_, err := cli.RoleGrantPermission(ctx, name, prefix, clientv3.GetPrefixRangeEnd(prefix), perm)
			return err
		},
		func() error { _, err := cli.UserAdd(ctx, name, password); return err },
		func() error { _, err := cli.UserGrantRole(ctx, name, name); return err },
	}
	for _, f := range steps {
		if err := f(); err != nil {
			t.Fatalf("etcd add user %s: %v", name, err)
		}
	}
}

// connect opens a client with the server's TLS material and the given
// credentials.
func (s *Server) connect(t testing.TB, user, password string) *clientv3.Client {
	t.Helper()
	cfg := clientv3.Config{
		Endpoints:   []string{s.Endpoint},
		DialTimeout: 10 * time.Second,
		Username:    user,
		Password:    password,
		Logger:      zap.NewNop(),
	}
	if s.Certs != nil {
		cfg.TLS = s.Certs.ClientTLS()
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	return cli
}

// Client is a root client (authenticated when auth is on), closed at the
// end of the test. Tests use it to write keys the way Patroni does.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli := s.connect(t, s.Username, s.Password)
	t.Cleanup(func() { cli.Close() })
	return cli
}

func (s *Server) kill() {
	if s.cmd == nil {
		return
	}
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
	s.cmd = nil
}

// Stop kills the server (etcd down) and waits until the port refuses
// connections. The data stays for Restart.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.kill()
	for i := 0; i < 100; i++ {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.Port), 100*time.Millisecond)
		if err != nil {
			return
		}
		c.Close()
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("etcd still accepts connections on port %d after kill", s.Port)
}

// Pause freezes the server (SIGSTOP): connections stay open and nothing
// answers. Resume continues it; Cleanup kills a paused server too.
func (s *Server) Pause(t testing.TB) {
	t.Helper()
	if err := syscall.Kill(s.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("pause etcd: %v", err)
	}
}

// Resume continues a paused server (SIGCONT).
func (s *Server) Resume(t testing.TB) {
	t.Helper()
	if err := syscall.Kill(s.cmd.Process.Pid, syscall.SIGCONT); err != nil {
		t.Fatalf("resume etcd: %v", err)
	}
}

// Restart starts the server again on the same ports and data directory.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.kill()
	if err := s.start(); err != nil {
		t.Fatalf("restart: %v\netcd log (%s):\n%s", err, s.logPath, s.LogTail())
	}
}

// LogTail is the end of etcd's output, for failure messages.
func (s *Server) LogTail() string {
	data, err := os.ReadFile(s.logPath)
	if err != nil {
		return err.Error()
	}
	const n = 3000
	if len(data) > n {
		data = data[len(data)-n:]
	}
	return string(data)
}

// ClientTLS is a TLS client configuration trusting the test CA and
// presenting the client certificate.
func (c *Certs) ClientTLS() *tls.Config {
	pool := x509.NewCertPool()
	pem, err := os.ReadFile(c.CA)
	if err == nil {
		pool.AppendCertsFromPEM(pem)
	}
	cert, err := tls.LoadX509KeyPair(c.ClientCert, c.ClientKey)
	t := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if err == nil {
		t.Certificates = []tls.Certificate{cert}
	}
	return t
}

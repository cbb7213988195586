// Package s3test runs real S3 server processes on 127.0.0.1 for tests:
// MinIO, and versitygw (Versity's S3 gateway on its posix backend) as a
// second, independent implementation. There is no mock: tests that need a
// server fail (never skip) when it is not installed; `make deps` builds
// both from their Go modules.
package s3test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/testport"
	"github.com/pgkeep/pgkeep/storage/s3"
)

// readyTimeout bounds a start. Either server is up in about a second on
// an idle machine; the rest is headroom for a loaded 2-core CI box.
const readyTimeout = 30 * time.Second

// Kind is an S3 server implementation.
type Kind string

const (
	MinIO   Kind = "minio"
	Versity Kind = "versitygw" // posix backend on a local directory
)

// Kinds are the implementations every S3 conformance test runs against.
var Kinds = []Kind{MinIO, Versity}

// Server is one server process and its data directory.
type Server struct {
	Kind      Kind
	Endpoint  string // http://127.0.0.1:Port
	AccessKey string
	SecretKey string
	Region    string
	Dir       string // temp dir: data/ and <kind>.log
	Port      int

	// IfNoneMatchStripped counts the requests a StripIfNoneMatch proxy
	// took the header off; nil for a real server.
	IfNoneMatchStripped *atomic.Int64

	bin     string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has exited
}

// binaries says where each kind's binary is looked for: the variable, the
// name on PATH, and the name under ~/.cache/pgkeep/bin and /work/cache/bin
// (where `make deps` puts them). (The variables are PGKEEP_TEST_*, not
// PGKEEP_MINIO: pgkeep rejects unknown PGKEEP_* variables as configuration
// typos, and the e2e tests' pgkeep processes inherit the environment.)
var binaries = map[Kind]struct{ env, name string }{
	MinIO:   {"PGKEEP_TEST_MINIO", "minio"},
	Versity: {"PGKEEP_TEST_VERSITYGW", "versitygw"},
}

// Binary finds the MinIO server binary: $PGKEEP_TEST_MINIO, `minio` on
// PATH, ~/.cache/pgkeep/bin/minio (where `make deps` puts it), or
// /work/cache/bin/minio.
func Binary() (string, error) { return KindBinary(MinIO) }

// KindBinary finds the binary of a server kind, as Binary does for MinIO.
func KindBinary(k Kind) (string, error) {
	b, ok := binaries[k]
	if !ok {
		return "", fmt.Errorf("unknown S3 server kind %q", k)
	}
	if p := os.Getenv(b.env); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath(b.name); err == nil {
		return p, nil
	}
	var candidates []string
	if home, err := os.UserHomeDir(); err == nil {
		candidates = append(candidates, filepath.Join(home, ".cache/pgkeep/bin", b.name))
	}
	candidates = append(candidates, filepath.Join("/work/cache/bin", b.name))
	for _, p := range candidates {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found: run `make deps` (builds it into ~/.cache/pgkeep/bin) or set %s to a %s binary", b.name, b.env, b.name)
}

// Start runs a fresh MinIO; t.Cleanup stops it and removes its data.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartKind(t, MinIO)
}

// StartVersity runs a fresh versitygw; t.Cleanup stops it and removes its
// data.
func StartVersity(t testing.TB) *Server {
	t.Helper()
	return StartKind(t, Versity)
}

// StartKind runs a fresh server of kind k; t.Cleanup stops it and removes
// its data.
func StartKind(t testing.TB, k Kind) *Server {
	t.Helper()
	bin, err := KindBinary(k)
	if err != nil {
		t.Fatal(err)
	}
	// Not t.TempDir: tests may chmod their temp dirs, and this one must be
	// removable at cleanup whatever happened.
	dir, err := os.MkdirTemp("", "pgkeep-"+string(k)+"-")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{
		Kind:      k,
		AccessKey: "pgkeeptest",
		SecretKey: "pgkeep-test-secret-key-do-not-log",
		Region:    "us-east-1",
		Dir:       dir,
		bin:       bin,
		logPath:   filepath.Join(dir, string(k)+".log"),
	}
	t.Cleanup(func() {
		s.kill()
		os.RemoveAll(dir)
	})
	// The free port is released before the server binds it, so another
	// process can take it in between: try a few.
	for attempt := 1; ; attempt++ {
		if s.Port, err = testport.Free(); err != nil {
			t.Fatal(err)
		}
		s.Endpoint = fmt.Sprintf("http://127.0.0.1:%d", s.Port)
		err := s.start()
		if err == nil {
			return s
		}
		if !errors.Is(err, errExited) || attempt == 3 {
			t.Fatalf("%v\n%s log (%s):\n%s", err, s.Kind, s.logPath, s.logTail())
		}
	}
}

var errExited = errors.New("server exited")

// start runs the server on s.Port and waits until it serves requests.
func (s *Server) start() error {
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "--- %s: starting on %s\n", time.Now().Format(time.RFC3339), s.Endpoint)
	cmd, health, err := s.command()
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so Stop kills anything it spawned too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s %s: %w", s.Kind, s.bin, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.cmd, s.exited = cmd, exited

	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(readyTimeout)
	for {
		resp, err := client.Get(s.Endpoint + health)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
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
			return fmt.Errorf("%s not ready on %s after %s", s.Kind, s.Endpoint, readyTimeout)
		}
	}
}

// command is the server's command line on s.Port (keys in the
// environment, never in argv) and the path that answers 200 once it serves.
func (s *Server) command() (*exec.Cmd, string, error) {
	data := filepath.Join(s.Dir, "data")
	addr := fmt.Sprintf("127.0.0.1:%d", s.Port)
	switch s.Kind {
	case MinIO:
		consolePort, err := testport.Free()
		if err != nil {
			return nil, "", err
		}
		cmd := exec.Command(s.bin, "server", "--quiet",
			"--address", addr,
			"--console-address", fmt.Sprintf("127.0.0.1:%d", consolePort),
			data)
		cmd.Env = append(os.Environ(),
			"MINIO_ROOT_USER="+s.AccessKey, "MINIO_ROOT_PASSWORD="+s.SecretKey,
			"MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_CI_CD=1")
		return cmd, "/minio/health/live", nil
	case Versity:
		// The posix backend serves each directory under data/ as a bucket.
		if err := os.MkdirAll(data, 0o700); err != nil {
			return nil, "", err
		}
		cmd := exec.Command(s.bin, "--port", addr, "--region", s.Region, "--health", "/health", "--quiet",
			"posix", data)
		cmd.Env = append(os.Environ(),
			"ROOT_ACCESS_KEY_ID="+s.AccessKey, "ROOT_SECRET_ACCESS_KEY="+s.SecretKey)
		return cmd, "/health", nil
	}
	return nil, "", fmt.Errorf("unknown S3 server kind %q", s.Kind)
}

func (s *Server) kill() {
	if s.cmd == nil {
		return
	}
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
	s.cmd = nil
}

// Stop kills the server (storage down) and waits until the port refuses
// connections. The data stays for Restart.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.notProxy(t)
	s.kill()
	for i := 0; i < 100; i++ {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.Port), 100*time.Millisecond)
		if err != nil {
			return
		}
		c.Close()
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s still accepts connections on port %d after kill", s.Kind, s.Port)
}

// Restart starts the server again on the same port and data directory and
// waits until it is ready.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.notProxy(t)
	s.kill()
	if err := s.start(); err != nil {
		t.Fatalf("restart: %v\n%s log (%s):\n%s", err, s.Kind, s.logPath, s.logTail())
	}
}

func (s *Server) notProxy(t testing.TB) {
	t.Helper()
	if s.IfNoneMatchStripped != nil {
		t.Fatal("s3test: Stop and Restart the server behind a StripIfNoneMatch proxy, not the proxy")
	}
}

// Pause stops the server process with SIGSTOP: the port still accepts
// connections (the kernel queues them) but nothing answers, like a storage
// that hangs. Resume continues it; t.Cleanup resumes it before the kill.
func (s *Server) Pause(t testing.TB) {
	t.Helper()
	if s.cmd == nil {
		t.Fatal("pause: minio is not running")
	}
	if err := syscall.Kill(-s.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("pause minio: %v", err)
	}
	t.Cleanup(func() { s.Resume(t) })
}

// Resume continues a paused server.
func (s *Server) Resume(t testing.TB) {
	t.Helper()
	if s.cmd == nil {
		return
	}
	if err := syscall.Kill(-s.cmd.Process.Pid, syscall.SIGCONT); err != nil {
		t.Fatalf("resume minio: %v", err)
	}
}

// Env is the AWS environment pgkeep needs to reach the server.
func (s *Server) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + s.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s.SecretKey,
		"AWS_REGION=" + s.Region,
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// Backend opens a storage backend on bucket/prefix. Credentials reach the
// s3 package only through the AWS chain, so this sets Env() in the test
// process's environment (the same values for every Server).
func (s *Server) Backend(t testing.TB, bucket, prefix string, o s3.Options) *s3.Backend {
	t.Helper()
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		if os.Getenv(k) != v {
			os.Setenv(k, v)
		}
	}
	o.Bucket, o.Prefix, o.Endpoint, o.Region, o.PathStyle = bucket, prefix, s.Endpoint, s.Region, true
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	b, err := s3.New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// CreateBucket creates a bucket.
func (s *Server) CreateBucket(t testing.TB, name string) {
	t.Helper()
	if err := s.Backend(t, name, "", s3.Options{}).CreateBucket(context.Background()); err != nil {
		t.Fatalf("create bucket %s: %v\n%s log:\n%s", name, err, s.Kind, s.logTail())
	}
}

// LogTail is the end of the server's output, for failure messages.
func (s *Server) LogTail() string { return s.logTail() }

// logTail is the end of the server's output, for failure messages.
func (s *Server) logTail() string {
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

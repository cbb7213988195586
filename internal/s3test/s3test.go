// Package s3test runs a real MinIO server process on 127.0.0.1 for tests.
// There is no mock: tests that need S3 fail (never skip) when MinIO is not
// installed; `make deps` builds it.
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
	"syscall"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/testport"
	"github.com/pgkeep/pgkeep/storage/s3"
)

// readyTimeout bounds a start. MinIO is up in about a second on an idle
// machine; the rest is headroom for a loaded 2-core CI box.
const readyTimeout = 30 * time.Second

// Server is one MinIO process and its data directory.
type Server struct {
	Endpoint  string // http://127.0.0.1:Port
	AccessKey string
	SecretKey string
	Region    string
	Dir       string // temp dir: data/ and minio.log
	Port      int

	bin     string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has exited
}

// Binary finds the MinIO server binary: $PGKEEP_TEST_MINIO, `minio` on
// PATH, ~/.cache/pgkeep/bin/minio (where `make deps` puts it), or
// /work/cache/bin/minio. (The variable is PGKEEP_TEST_*, not PGKEEP_MINIO:
// pgkeep rejects unknown PGKEEP_* variables as configuration typos, and the
// e2e tests' pgkeep processes inherit the environment.)
func Binary() (string, error) {
	if p := os.Getenv("PGKEEP_TEST_MINIO"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("minio"); err == nil {
		return p, nil
	}
	var candidates []string
	if home, err := os.UserHomeDir(); err == nil {
		candidates = append(candidates, filepath.Join(home, ".cache/pgkeep/bin/minio"))
	}
	candidates = append(candidates, "/work/cache/bin/minio")
	for _, p := range candidates {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	return "", errors.New("minio not found: run `make deps` (builds it into ~/.cache/pgkeep/bin) or set PGKEEP_TEST_MINIO to a minio binary")
}

// Start runs a fresh MinIO; t.Cleanup stops it and removes its data.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	// Not t.TempDir: tests may chmod their temp dirs, and this one must be
	// removable at cleanup whatever happened.
	dir, err := os.MkdirTemp("", "pgkeep-minio-")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{
		AccessKey: "pgkeeptest",
		SecretKey: "pgkeep-test-secret-key-do-not-log",
		Region:    "us-east-1",
		Dir:       dir,
		bin:       bin,
		logPath:   filepath.Join(dir, "minio.log"),
	}
	t.Cleanup(func() {
		s.kill()
		os.RemoveAll(dir)
	})
	// The free port is released before MinIO binds it, so another process
	// can take it in between: try a few.
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
			t.Fatalf("%v\nminio log (%s):\n%s", err, s.logPath, s.logTail())
		}
	}
}

var errExited = errors.New("minio exited")

// start runs MinIO on s.Port and waits until it serves requests.
func (s *Server) start() error {
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "--- %s: starting on %s\n", time.Now().Format(time.RFC3339), s.Endpoint)
	consolePort, err := testport.Free()
	if err != nil {
		return err
	}
	console := fmt.Sprintf("127.0.0.1:%d", consolePort)
	cmd := exec.Command(s.bin, "server", "--quiet",
		"--address", fmt.Sprintf("127.0.0.1:%d", s.Port),
		"--console-address", console,
		filepath.Join(s.Dir, "data"))
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+s.AccessKey, "MINIO_ROOT_PASSWORD="+s.SecretKey,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_CI_CD=1")
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so Stop kills anything it spawned too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start minio %s: %w", s.bin, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.cmd, s.exited = cmd, exited

	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(readyTimeout)
	for {
		resp, err := client.Get(s.Endpoint + "/minio/health/live")
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
			return fmt.Errorf("minio not ready on %s after %s", s.Endpoint, readyTimeout)
		}
	}
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
	s.kill()
	for i := 0; i < 100; i++ {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.Port), 100*time.Millisecond)
		if err != nil {
			return
		}
		c.Close()
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("minio still accepts connections on port %d after kill", s.Port)
}

// Restart starts the server again on the same port and data directory and
// waits until it is ready.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.kill()
	if err := s.start(); err != nil {
		t.Fatalf("restart: %v\nminio log (%s):\n%s", err, s.logPath, s.logTail())
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
		t.Fatalf("create bucket %s: %v\nminio log:\n%s", name, err, s.logTail())
	}
}

// logTail is the end of MinIO's output, for failure messages.
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

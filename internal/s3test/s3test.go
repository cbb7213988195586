// Package s3test runs a real MinIO server process on 127.0.0.1 for tests.
// There is no mock: tests that need S3 fail (never skip) when MinIO is not
// installed; `make deps` builds it.
package s3test

import (
	"context"
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

	"github.com/pgkeep/pgkeep/storage/s3"
)

// Server is one MinIO process and its data directory.
type Server struct {
	Endpoint  string
	AccessKey string
	SecretKey string
	Region    string
	Dir       string
	Port      int

	bin     string
	cmd     *exec.Cmd
	logPath string
}

// Binary finds the MinIO server binary.
func Binary() (string, error) {
	if p := os.Getenv("PGKEEP_TEST_MINIO"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("minio"); err == nil {
		return p, nil
	}
	home, _ := os.UserHomeDir()
	for _, p := range []string{filepath.Join(home, ".cache/pgkeep/bin/minio"), "/work/cache/bin/minio"} {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	return "", fmt.Errorf("minio not found: run `make deps` (builds it into ~/.cache/pgkeep/bin) or set PGKEEP_TEST_MINIO")
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Start runs a fresh MinIO; it is stopped and its data removed at cleanup.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "pgkeep-minio-")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{
		AccessKey: "pgkeeptest",
		SecretKey: "pgkeep-test-secret-key-do-not-log",
		Region:    "us-east-1",
		Dir:       dir,
		Port:      freePort(t),
		bin:       bin,
		logPath:   dir + ".log",
	}
	s.Endpoint = fmt.Sprintf("http://127.0.0.1:%d", s.Port)
	t.Cleanup(func() {
		s.kill()
		os.RemoveAll(dir)
		os.Remove(s.logPath)
	})
	s.start(t)
	return s
}

func (s *Server) start(t testing.TB) {
	t.Helper()
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(s.bin, "server", "--quiet", "--address", fmt.Sprintf("127.0.0.1:%d", s.Port),
		"--console-address", fmt.Sprintf("127.0.0.1:%d", freePort(t)), filepath.Join(s.Dir, "data"))
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+s.AccessKey, "MINIO_ROOT_PASSWORD="+s.SecretKey,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_CI_CD=1")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start minio: %v", err)
	}
	s.cmd = cmd
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(s.Endpoint + "/minio/health/live")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.kill()
	log, _ := os.ReadFile(s.logPath)
	t.Fatalf("minio did not become ready on %s:\n%s", s.Endpoint, tail(string(log), 3000))
}

func (s *Server) kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	s.cmd.Wait()
	s.cmd = nil
}

// Stop kills the server (storage down) and waits until the port refuses.
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
	t.Fatal("minio still accepts connections after kill")
}

// Restart starts the server again on the same port and data directory.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.kill()
	s.start(t)
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

// Backend opens a storage backend on bucket/prefix with the server's
// credentials (set in this process's environment for the AWS chain).
func (s *Server) Backend(t testing.TB, bucket, prefix string, o s3.Options) *s3.Backend {
	t.Helper()
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v)
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
		t.Fatalf("create bucket %s: %v", name, err)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

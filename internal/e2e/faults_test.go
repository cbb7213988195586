package e2e

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/pgtest"
	"github.com/pgkeep/pgkeep/internal/s3test"
	"github.com/pgkeep/pgkeep/internal/testbin"
)

// TestS3DownDuringArchiving: with the S3 server stopped, wal-push fails
// within the configured timeout, PostgreSQL keeps the .ready files, and once
// the server is back the archiver catches up with no gap.
func TestS3DownDuringArchiving(t *testing.T) {
	srv := s3test.Start(t)
	r := newRepo(t, repoOpts{kind: "s3", s3: srv, extra: []string{"wal:", "  push_ahead: 2"}})
	c := archivingCluster(t, r, "archive_timeout = 0")
	first := switchSegments(t, c, 3, 1000)
	waitArchived(t, c, first, time.Minute)

	srv.Stop(t)
	last := switchSegments(t, c, 4, 1000)
	pgtest.WaitFor(t, 2*time.Minute, "archiver to report failures", func() (bool, error) {
		_, _, failed := archiverStats(t, c)
		return failed >= 2, nil
	})
	ready := readyFiles(t, c)
	found := false
	for _, n := range ready {
		if n == last {
			found = true
		}
	}
	if !found {
		t.Fatalf("PostgreSQL does not keep %s.ready while storage is down (ready: %v)", last, ready)
	}
	if !strings.Contains(c.Log(), "pgkeep: push ") {
		t.Fatalf("no pgkeep error line in the PostgreSQL log:\n%s", pgtest.Tail(c.Log(), 2000))
	}
	// The configured bound: timeout 5s, 2 attempts.
	pgdata := walDir(t)
	writeSegment(t, pgdata, "000000010000000000000077", randomSegment(t, "000000010000000000000077", 16<<20))
	res := runPgkeep(t, r.env, pgdata, "wal-push", "pg_wal/000000010000000000000077")
	if res.code == 0 || res.code >= 126 {
		t.Fatalf("push with storage down: exit %d", res.code)
	}
	if res.elapsed > 20*time.Second {
		t.Fatalf("push with storage down took %s; the config bounds it to ~5s", res.elapsed)
	}
	if strings.Contains(res.stderr, srv.SecretKey) {
		t.Fatal("secret key in error output")
	}

	srv.Restart(t)
	pgtest.WaitFor(t, 3*time.Minute, "archiver to catch up", func() (bool, error) {
		l, _, _ := archiverStats(t, c)
		return l >= last && len(l) == 24, nil
	})
	// No gap: every segment PostgreSQL marked done comes back intact.
	for _, f := range doneFiles(t, c) {
		want, err := os.ReadFile(filepath.Join(c.DataDir, "pg_wal", f))
		if err != nil {
			t.Fatal(err)
		}
		got, res := fetchBytes(t, r, f)
		if res.code != 0 || !bytes.Equal(got, want) {
			t.Fatalf("%s after recovery: exit %d %s", f, res.code, res.stderr)
		}
	}
	if len(readyFiles(t, c)) != 0 {
		t.Fatalf("still .ready after catching up: %v", readyFiles(t, c))
	}
}

// startPush starts wal-push in the background so the test can kill it.
func startPush(t *testing.T, r *testRepo, pgdata, seg string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(testbin.Pgkeep(t), "wal-push", "pg_wal/"+seg)
	cmd.Env = append([]string{"PATH=/usr/bin:/bin", "HOME=/tmp"}, r.env...)
	cmd.Dir = pgdata
	pgtest.AsPostgres(t, cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// TestKillDuringPushFS kills wal-push at several moments of a large push:
// afterwards the name holds either nothing or the complete file.
func TestKillDuringPushFS(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs", encrypted: true})
	pgdata := walDir(t)
	seg := "000000010000000000000003"
	data := randomSegment(t, seg, 256<<20)
	writeSegment(t, pgdata, seg, data)
	for _, delay := range []time.Duration{50 * time.Millisecond, 300 * time.Millisecond, 700 * time.Millisecond, 1500 * time.Millisecond} {
		cmd := startPush(t, r, pgdata, seg)
		time.Sleep(delay)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		got, res := fetchBytes(t, r, seg)
		switch res.code {
		case 1: // nothing visible: fine
		case 0:
			if !bytes.Equal(got, data) {
				t.Fatalf("after kill at %s: a different file is visible", delay)
			}
		default:
			t.Fatalf("after kill at %s: fetch exit %d %s", delay, res.code, res.stderr)
		}
	}
	if res := runPgkeep(t, r.env, pgdata, "wal-push", "pg_wal/"+seg); res.code != 0 {
		t.Fatalf("push after kills: %s", res.stderr)
	}
	got, res := fetchBytes(t, r, seg)
	if res.code != 0 || !bytes.Equal(got, data) {
		t.Fatalf("fetch after kills: exit %d", res.code)
	}
}

// TestKillDuringPushS3 kills wal-push in the middle of a multipart upload
// slowed down by a throttling proxy: no object becomes visible.
func TestKillDuringPushS3(t *testing.T) {
	srv := s3test.Start(t)
	proxy, addr := newThrottleProxy(t, strings.TrimPrefix(srv.Endpoint, "http://"), 2<<20)
	r := newRepo(t, repoOpts{kind: "s3", s3: srv, extra: []string{"  part_size_mb: 5"}})
	slowEnv := append(append([]string{}, r.env...), "PGKEEP_S3_ENDPOINT=http://"+addr, "PGKEEP_S3_TIMEOUT=5m")
	pgdata := walDir(t)
	seg := "000000010000000000000011"
	data := randomSegment(t, seg, 32<<20)
	writeSegment(t, pgdata, seg, data)

	slow := &testRepo{env: slowEnv}
	cmd := startPush(t, slow, pgdata, seg)
	time.Sleep(4 * time.Second) // ~8 MiB through the proxy: inside the upload
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if proxy.bytes() < 1<<20 {
		t.Fatalf("only %d bytes reached the proxy before the kill", proxy.bytes())
	}
	if _, res := fetchBytes(t, r, seg); res.code != 1 {
		t.Fatalf("after kill -9 mid-upload: fetch exit %d (want 1: nothing visible) %s", res.code, res.stderr)
	}
	if res := runPgkeep(t, r.env, pgdata, "wal-push", "pg_wal/"+seg); res.code != 0 {
		t.Fatalf("push after kill: %s", res.stderr)
	}
	got, res := fetchBytes(t, r, seg)
	if res.code != 0 || !bytes.Equal(got, data) {
		t.Fatalf("fetch after kill: exit %d", res.code)
	}
}

// throttleProxy forwards TCP to target, limiting client->server bytes/s.
type throttleProxy struct {
	gate sync.Mutex
	mu   sync.Mutex
	n    int64
}

func (p *throttleProxy) bytes() int64 { p.mu.Lock(); defer p.mu.Unlock(); return p.n }

func newThrottleProxy(t *testing.T, target string, bytesPerSec int) (*throttleProxy, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &throttleProxy{}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				s, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer s.Close()
				go io.Copy(c, s)
				buf := make([]byte, 32<<10)
				for ctx.Err() == nil {
					n, err := c.Read(buf)
					if n > 0 {
						// One lock for all connections: the limit is global,
						// so parallel multipart uploads cannot outrun it.
						p.gate.Lock()
						_, werr := s.Write(buf[:n])
						time.Sleep(time.Duration(n) * time.Second / time.Duration(bytesPerSec))
						p.gate.Unlock()
						p.mu.Lock()
						p.n += int64(n)
						p.mu.Unlock()
						if werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return p, l.Addr().String()
}

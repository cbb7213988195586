// Package testbin builds the pgkeep binary once per test process, into a
// directory every user (including postgres, which runs archive_command) can
// execute from.
package testbin

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	once sync.Once
	path string
	err  error
	out  []byte
)

// Pgkeep returns the path of a freshly built pgkeep binary.
func Pgkeep(t testing.TB) string {
	t.Helper()
	once.Do(func() {
		var gomod []byte
		gomod, err = exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			return
		}
		root := filepath.Dir(strings.TrimSpace(string(gomod)))
		var dir string
		dir, err = os.MkdirTemp("", "pgkeep-bin-")
		if err != nil {
			return
		}
		os.Chmod(dir, 0o755)
		path = filepath.Join(dir, "pgkeep")
		cmd := exec.Command("go", "build", "-o", path, "./cmd/pgkeep")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err = cmd.CombinedOutput()
	})
	if err != nil {
		t.Fatalf("build pgkeep: %v\n%s", err, out)
	}
	return path
}

// Cleanup removes the built binary; call it from TestMain after m.Run.
func Cleanup() {
	if path != "" {
		os.RemoveAll(filepath.Dir(path))
	}
}

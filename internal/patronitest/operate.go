package patronitest

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/internal/pgtest"
)

// Stop stops n's Patroni as `systemctl stop patroni` does (SIGTERM: Patroni
// stops PostgreSQL and releases the leader key) and waits for it to exit.
func (c *Cluster) Stop(t testing.TB, n *Node) {
	t.Helper()
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	n.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { n.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(90 * time.Second):
		t.Errorf("%s: Patroni did not stop within 90s of SIGTERM; killing it", n.Name)
		c.Kill(n)
		return
	}
	n.cmd = nil
	if n.logf != nil {
		n.logf.Close()
		n.logf = nil
	}
}

// Reconfigure rewrites every node's patroni.yml from o (an operator editing
// patroni.yml, e.g. the bootstrap section); it takes effect at the next
// StartNode.
func (c *Cluster) Reconfigure(t testing.TB, o Options) {
	t.Helper()
	for i, n := range c.Nodes {
		if err := os.WriteFile(n.Config, []byte(c.config(n, i, o)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// PatronictlInput runs patronictl against n's configuration with input on
// its standard input, for commands that ask for confirmation.
func (c *Cluster) PatronictlInput(t testing.TB, n *Node, input string, args ...string) string {
	t.Helper()
	cmd := exec.Command("patronictl", append([]string{"-c", n.Config}, args...)...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + c.dir, "LANG=C.UTF-8"}
	cmd.Stdin = strings.NewReader(input)
	pgtest.AsPostgres(t, cmd)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("patronictl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

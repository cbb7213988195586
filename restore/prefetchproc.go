package restore

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/pgkeep/pgkeep/pg"
)

// PrefetchProcess is how restore_command starts the background prefetch:
// a `pgkeep wal-prefetch` process that outlives it.
type PrefetchProcess struct {
	// Count is how many segments to keep ahead (wal.prefetch); 0: none.
	Count int
	// BudgetBytes caps the prefetch directory (restore.wal_prefetch_bytes);
	// 0: no cap.
	BudgetBytes int64
	// Executable is the pgkeep binary; "": this very process's.
	Executable string
	// GlobalArgs go before the wal-prefetch word (--config FILE), so the
	// child reads the settings this process read.
	GlobalArgs []string
}

// PrefetchCount is how many segments of segSize bytes to keep ahead: count,
// within budget bytes (the disk budget of the prefetch directory) when that
// is set.
func PrefetchCount(count int, budget, segSize int64) int {
	if budget > 0 && pg.ValidSegmentSize(segSize) {
		count = min(count, int(budget/segSize))
	}
	return count
}

// maybeStart starts a prefetch of the segments after the one just fetched
// unless the prefetch directory is still well stocked. It is best effort:
// a prefetch that does not start only makes recovery slower.
func (p PrefetchProcess) maybeStart(after, dir string, segSize int64) error {
	n := PrefetchCount(p.Count, p.BudgetBytes, segSize)
	if n <= 0 || !needPrefetch(dir, n) {
		return nil
	}
	// A restore's background bulk download is still filling the directory:
	// a prefetch would only find the lock taken (a process start for
	// nothing). A plan file whose process is gone does not count.
	if _, err := os.Stat(filepath.Join(dir, bulkPlanFile)); err == nil && downloaderAlive(dir) {
		return nil
	}
	return p.start(after, dir, segSize)
}

// needPrefetch avoids starting a process per segment when the prefetch
// directory is still well stocked.
func needPrefetch(dir string, count int) bool {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return true
	}
	ready := 0
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") && len(e.Name()) == 24+1+64 {
			ready++
		}
	}
	return ready <= count/2
}

// start re-executes the binary (by its own path, not through PATH)
// detached from PostgreSQL's process group, so restore_command returns at
// once and the prefetch survives it.
func (p PrefetchProcess) start(after, dir string, segSize int64) error {
	exe := p.Executable
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(dir, "prefetch.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := append(append([]string{}, p.GlobalArgs...),
		"wal-prefetch", "--after", after, "--dir", dir, "--segment-size", strconv.FormatInt(segSize, 10))
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	return cmd.Process.Release()
}

// bulkPlanFile in the prefetch directory is the plan a background bulk
// download works through (StartBulkProcess writes it, RunBulkPlan reads
// it and removes it when it ends: its absence means no bulk download is
// running or due).
const bulkPlanFile = ".bulk.plan"

// bulkLog is the background bulk download's log, next to prefetch.log.
const bulkLog = "bulk.log"

// startBulk re-executes the binary as `wal-prefetch --bulk --dir DIR`,
// detached like start, to work through the plan written in dir. The
// caller may Wait on the returned command while it lives.
func (p PrefetchProcess) startBulk(dir string) (*exec.Cmd, error) {
	exe := p.Executable
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, err
		}
	}
	logf, err := os.OpenFile(filepath.Join(dir, bulkLog), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	args := append(append([]string{}, p.GlobalArgs...), "wal-prefetch", "--bulk", "--dir", dir)
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return cmd, nil
}

// TakePrefetchedShell is a shell prefix for restore_command that does
// TakePrefetched's work without starting pgkeep: when PostgreSQL asks for
// a segment as pg_wal/RECOVERYXLOG and a prefetch (or a restore's bulk
// download) left it in the prefetch directory under its final name
// (written whole, verified, fsynced, then renamed), it is moved into
// place and the command exits 0. In every other case (no such file, a
// history file, another %p such as pg_rewind's, a failed mv) the command
// goes on to what follows the prefix: wal-fetch, which alone decides
// "missing" and what a failure means. Starting pgkeep (a 30 MB binary,
// its package init, the config) costs ~11 ms on an idle 2-core machine
// and about twice that beside replay; sh and mv ~2 ms.
func TakePrefetchedShell() string {
	// PostgreSQL runs restore_command in the data directory with %p
	// pg_wal/RECOVERYXLOG (relative); the prefetch directory is
	// DefaultPrefetchDir of that. Prefetched names are
	// <segment>.<64 hex digits of SHA-256>.
	dest := "pg_wal/" + RecoveryFileName
	glob := DefaultPrefetchDir(dest) + "/%f." + strings.Repeat("?", 64)
	return `for s in ` + glob + `; do [ "%p" = ` + dest + ` ] && [ -f "$s" ] && mv -f "$s" %p && exit 0; done; `
}

package pg

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// RunningCluster is a postmaster running on this host and the directories
// it writes to: its data directory and every tablespace location.
type RunningCluster struct {
	PID         int
	DataDir     string
	Tablespaces []string
}

// PostmasterPID returns the PID in dataDir/postmaster.pid if that process
// is alive, else 0.
func PostmasterPID(dataDir string) int {
	data, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return 0
	}
	if err := syscall.Kill(pid, 0); err == nil || errors.Is(err, syscall.EPERM) {
		return pid
	}
	return 0
}

// RunningClusters finds the postmasters running on this host: a process
// whose working directory (a postmaster's is its data directory) holds a
// postmaster.pid naming that very process. Processes whose working
// directory this user cannot read are not seen.
func RunningClusters() []RunningCluster {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []RunningCluster
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", p.Name(), "cwd"))
		if err != nil {
			continue
		}
		if PostmasterPID(cwd) != pid {
			continue
		}
		c := RunningCluster{PID: pid, DataDir: cwd}
		links, _ := os.ReadDir(filepath.Join(cwd, "pg_tblspc"))
		for _, l := range links {
			if loc, err := filepath.EvalSymlinks(filepath.Join(cwd, "pg_tblspc", l.Name())); err == nil {
				c.Tablespaces = append(c.Tablespaces, loc)
			}
		}
		out = append(out, c)
	}
	return out
}

// UsedBy returns the running cluster that writes to dir (its data
// directory or a tablespace, dir inside one of them, or one of them inside
// dir), if any.
func UsedBy(dir string, running []RunningCluster) (RunningCluster, string, bool) {
	d := resolve(dir)
	for _, c := range running {
		if overlaps(d, resolve(c.DataDir)) {
			return c, c.DataDir, true
		}
		for _, t := range c.Tablespaces {
			if overlaps(d, t) {
				return c, t, true
			}
		}
	}
	return RunningCluster{}, "", false
}

// resolve follows symlinks as far as the path exists.
func resolve(p string) string {
	p = filepath.Clean(p)
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	if parent := filepath.Dir(p); parent != p {
		return filepath.Join(resolve(parent), filepath.Base(p))
	}
	return p
}

func overlaps(a, b string) bool {
	return a == b || a == "/" || b == "/" || strings.HasPrefix(a, b+"/") || strings.HasPrefix(b, a+"/")
}

package drill

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pgkeep/pgkeep/repo"
)

func TestLogReasons(t *testing.T) {
	log := `2026-12-01 15:00:00.000 UTC [100] LOG:  starting PostgreSQL 15.8
2026-12-01 15:00:00.100 UTC [101] LOG:  restored log file "000000010000000000000003" from archive
pgkeep: wal-fetch 000000010000000000000004: wal/0000000100000000/000000010000000000000004: object is corrupt
2026-12-01 15:00:01.000 UTC [101] FATAL:  could not restore file "000000010000000000000004" from archive: child process exited with exit code 255
2026-12-01 15:00:01.100 UTC [100] LOG:  startup process (PID 101) exited with exit code 1
`
	got := logReasons(log)
	if !strings.Contains(got, "pgkeep: wal-fetch 000000010000000000000004: wal/0000000100000000/000000010000000000000004: object is corrupt") ||
		!strings.Contains(got, "FATAL:  could not restore file") || strings.Contains(got, "starting PostgreSQL") {
		t.Errorf("logReasons = %q", got)
	}
	if got := logReasons("LOG: all fine\n"); got != "" {
		t.Errorf("logReasons of a quiet log = %q", got)
	}
}

func TestPatternQuote(t *testing.T) {
	for in, want := range map[string]string{`orders`: `"orders"`, `My "T*?"`: `"My ""T*?"""`, `a.b`: `"a.b"`} {
		if got := patternQuote(in); got != want {
			t.Errorf("patternQuote(%q) = %q, want %q", in, got, want)
		}
	}
}

// The copy never archives, never reads the member's configuration, and
// listens on loopback with its socket in the scratch directory.
func TestSettings(t *testing.T) {
	o := Options{SharedBuffers: DefaultSharedBuffers}
	get := func(version int) map[string]string {
		m := map[string]string{}
		for _, kv := range settings("/s", "/s/data", 5555, version, o) {
			m[kv[0]] = kv[1]
		}
		return m
	}
	s := get(150004)
	for k, v := range map[string]string{"archive_mode": "off", "archive_command": "", "archive_library": "", "listen_addresses": "127.0.0.1",
		"port": "5555", "unix_socket_directories": "/s", "config_file": "/s/postgresql.conf", "hba_file": "/s/pg_hba.conf",
		"data_directory": "/s/data", "hot_standby": "off", "shared_preload_libraries": "", "external_pid_file": "", "shared_buffers": "64MB"} {
		if got, ok := s[k]; !ok || got != v {
			t.Errorf("%s = %q (set %v), want %q", k, got, ok, v)
		}
	}
	if _, ok := get(140010)["archive_library"]; ok {
		t.Error("archive_library given to PostgreSQL 14, which does not know it")
	}
}

func TestCheckBudget(t *testing.T) {
	dir := t.TempDir()
	s := repo.Summary{ID: "b1", DataSize: 10 << 20}
	if err := checkBudget(Options{ScratchDir: dir}, s); err != nil {
		t.Errorf("a 10 MiB backup: %v", err)
	}
	err := checkBudget(Options{ScratchDir: dir, MaxBytes: 1 << 20}, s)
	if !errors.Is(err, ErrBudget) || !strings.Contains(err.Error(), "b1") || !strings.Contains(err.Error(), "maximum") {
		t.Errorf("over max bytes: %v", err)
	}
	s.DataSize = 1 << 62
	err = checkBudget(Options{ScratchDir: dir}, s)
	if !errors.Is(err, ErrBudget) || !strings.Contains(err.Error(), "free") {
		t.Errorf("over the free space: %v", err)
	}
}

func TestMakeScratchRefusesTheMembersDataDirectory(t *testing.T) {
	member := filepath.Join(t.TempDir(), "main")
	os.Mkdir(member, 0o700)
	for _, parent := range []string{member, filepath.Join(member, "base")} {
		if dir, _, err := makeScratch(Options{ScratchDir: parent, MemberDataDir: member}); err == nil || !strings.Contains(err.Error(), "overlaps") {
			t.Errorf("scratch in %s: dir %q, err %v", parent, dir, err)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(member, scratchPrefix+"*")); len(m) > 0 {
		t.Errorf("created %v", m)
	}
	// Beside it is fine.
	dir, lock, err := makeScratch(Options{ScratchDir: filepath.Dir(member), MemberDataDir: member})
	if err != nil {
		t.Fatal(err)
	}
	lock.Close()
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("scratch directory %s: %v %v", dir, fi, err)
	}
}

// A scratch directory whose drill died is removed by the next drill; one
// whose drill runs (holds its lock), or being created (no lock file yet),
// is not.
func TestRemoveStale(t *testing.T) {
	parent := t.TempDir()
	dead, live, fresh := filepath.Join(parent, scratchPrefix+"dead"), "", filepath.Join(parent, scratchPrefix+"fresh")
	os.MkdirAll(filepath.Join(dead, "data"), 0o700)
	os.WriteFile(filepath.Join(dead, lockName), nil, 0o600)
	os.MkdirAll(fresh, 0o700)
	live, lock, err := makeScratch(Options{ScratchDir: parent})
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	removeStale(parent, slog.New(slog.DiscardHandler))
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("the dead drill's directory is still there (%v)", err)
	}
	for _, d := range []string{live, fresh} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s was removed: %v", d, err)
		}
	}
	// The live drill still holds its lock.
	f, _ := os.Open(filepath.Join(live, lockName))
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err == nil {
		t.Error("removeStale took the live drill's lock")
	}
}

func TestFirstLines(t *testing.T) {
	out := "heap table \"postgres.public.victim\", block 0, offset 100:\n    xmin 2147483632 equals or exceeds next valid transaction ID 0:727\nbtree index \"postgres.public.i\":\n    bad\nmore\n"
	if got, want := firstLines(out, 3), `heap table "postgres.public.victim", block 0, offset 100: xmin 2147483632 equals or exceeds next valid transaction ID 0:727; btree index "postgres.public.i":`; got != want {
		t.Errorf("firstLines = %q\nwant %q", got, want)
	}
}

func TestCheckBounds(t *testing.T) {
	for _, o := range []Options{{AmcheckRelations: -2}, {AmcheckRelations: MaxAmcheckRelations + 1},
		{AmcheckTimeout: -time.Second}, {AmcheckTimeout: MaxAmcheckTimeout + time.Second},
		{RecoveryTimeout: -time.Second}, {RecoveryTimeout: MaxRecoveryTimeout + time.Second}} {
		if err := o.CheckBounds(); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
	if err := (&Options{AmcheckRelations: -1, AmcheckTimeout: time.Hour, RecoveryTimeout: time.Hour}).CheckBounds(); err != nil {
		t.Error(err)
	}
}

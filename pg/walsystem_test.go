package pg

import "testing"

func TestArchiveDataDir(t *testing.T) {
	for _, c := range []struct{ wal, pgdata, want string }{
		{"pg_wal/000000010000000000000001", "", "."},
		{"/srv/pg/pg_wal/000000010000000000000001", "", "/srv/pg"},
		{"/srv/pg/pg_wal/000000010000000000000001", "/data", "/data"},
		{"pg_wal/000000010000000000000001", "/data", "/data"},
	} {
		if got := ArchiveDataDir(c.wal, c.pgdata); got != c.want {
			t.Errorf("ArchiveDataDir(%q, %q) = %q, want %q", c.wal, c.pgdata, got, c.want)
		}
	}
}

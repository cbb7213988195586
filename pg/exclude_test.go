package pg

import "testing"

func TestExcludeFile(t *testing.T) {
	for _, tc := range []struct {
		rel  string
		top  bool
		want bool
	}{
		{"postmaster.pid", true, true},
		{"backup_label", true, true},
		{"recovery.signal", true, true},
		{"postgresql.auto.conf.tmp", true, true},
		{"postgresql.conf", true, false},
		{"base/1/backup_label", true, false}, // only at the top level
		{"pg_tblspc/16400/backup_label", false, false},
		{"base/1/pg_internal.init", true, true}, // anywhere
		{"pg_tblspc/16400/PG_15_1/1/pg_internal.init", false, true},
		{"base/1/t3_16500", true, true}, // temporary relation
		{"base/1/t3_16500.1", true, true},
		{"base/1/16500", true, false},
		{"base/pgsql_tmp/pgsql_tmp123.0", true, true},
	} {
		if got := ExcludeFile(tc.rel, tc.top); got != tc.want {
			t.Errorf("ExcludeFile(%q, %v) = %v, want %v", tc.rel, tc.top, got, tc.want)
		}
	}
	for dir, want := range map[string]bool{"pg_wal": true, "pg_stat_tmp": true, "pg_replslot": true, "pg_subtrans": true,
		"pg_xact": false, "base": false, "pg_wal/archive_status": false} {
		if ExcludeDirContents(dir) != want {
			t.Errorf("ExcludeDirContents(%q) = %v", dir, !want)
		}
	}
}

func TestRelationFork(t *testing.T) {
	for name, want := range map[string][2]string{
		"16384": {"16384", ""}, "16384_fsm": {"16384", "fsm"}, "16384_init": {"16384", "init"},
		"16384.2": {"16384", ""}, "16384_vm.1": {"16384", "vm"},
	} {
		node, fork, ok := RelationFork(name)
		if !ok || node != want[0] || fork != want[1] {
			t.Errorf("RelationFork(%q) = %q, %q, %v; want %q, %q", name, node, fork, ok, want[0], want[1])
		}
	}
	for _, name := range []string{"PG_VERSION", "t3_16384", "16384_", "pg_internal.init"} {
		if _, _, ok := RelationFork(name); ok {
			t.Errorf("RelationFork(%q) accepted", name)
		}
	}
}

func TestLabelTimeline(t *testing.T) {
	tli, err := LabelTimeline("START WAL LOCATION: 0/9000028 (file 000000030000000000000009)\nCHECKPOINT LOCATION: 0/9000060\nSTART TIMELINE: 3\n")
	if err != nil || tli != 3 {
		t.Fatalf("LabelTimeline = %d, %v; want 3", tli, err)
	}
	if _, err := LabelTimeline("START WAL LOCATION: 0/9000028\n"); err == nil {
		t.Fatal("a label without START TIMELINE accepted")
	}
}

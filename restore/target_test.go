package restore

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
)

func TestParseTarget(t *testing.T) {
	at := time.Date(2026, 11, 22, 17, 4, 5, 123000000, time.UTC)
	for _, tc := range []struct {
		name string
		spec TargetSpec
		want Target
		conf []string // Settings as key=value
	}{
		{"zero replays all WAL", TargetSpec{}, Target{}, []string{"recovery_target_timeline=latest"}},
		{"immediate", TargetSpec{Immediate: true, Action: "promote"},
			Target{Kind: TargetImmediate, Action: ActionPromote},
			[]string{"recovery_target=immediate", "recovery_target_action=promote", "recovery_target_timeline=latest"}},
		{"time with offset", TargetSpec{Time: "2026-11-22 18:04:05.123+01", Exclusive: true},
			Target{Kind: TargetTime, Time: at, Exclusive: true},
			[]string{"recovery_target_time=2026-11-22 17:04:05.123+00:00", "recovery_target_inclusive=off", "recovery_target_timeline=latest"}},
		{"lsn normalised", TargetSpec{LSN: "16/b374d848", Timeline: "current"},
			Target{Kind: TargetLSN, LSN: pg.LSN(0x16_B374D848), Timeline: TargetTimeline{Kind: TimelineCurrent}},
			[]string{"recovery_target_lsn=16/B374D848", "recovery_target_timeline=current"}},
		{"xid kept as given", TargetSpec{XID: "771", Action: "pause"},
			Target{Kind: TargetXID, XID: "771", Action: ActionPause},
			[]string{"recovery_target_xid=771", "recovery_target_action=pause", "recovery_target_timeline=latest"}},
		{"name", TargetSpec{Name: "before-upgrade", Timeline: "3", Action: "shutdown"},
			Target{Kind: TargetName, Name: "before-upgrade", Action: ActionShutdown, Timeline: TargetTimeline{Kind: TimelineID, ID: 3}},
			[]string{"recovery_target_name=before-upgrade", "recovery_target_action=shutdown", "recovery_target_timeline=3"}},
		{"timeline as PostgreSQL reads it", TargetSpec{Timeline: "010"},
			Target{Timeline: TargetTimeline{Kind: TimelineID, ID: 8}}, []string{"recovery_target_timeline=8"}},
		{"exclusive without a target writes nothing for it", TargetSpec{Exclusive: true, Timeline: "latest"},
			Target{Exclusive: true}, []string{"recovery_target_timeline=latest"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseTarget(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Time.Equal(tc.want.Time) {
				t.Fatalf("time %v, want %v", got.Time, tc.want.Time)
			}
			cmp, want := got, tc.want
			cmp.Time, want.Time = time.Time{}, time.Time{}
			if cmp != want {
				t.Fatalf("ParseTarget(%+v) = %+v, want %+v", tc.spec, got, tc.want)
			}
			var conf []string
			for _, kv := range got.Settings() {
				conf = append(conf, kv[0]+"="+kv[1])
			}
			if !slices.Equal(conf, tc.conf) {
				t.Fatalf("settings %q, want %q", conf, tc.conf)
			}
		})
	}
}

func TestParseTargetRefuses(t *testing.T) {
	for _, tc := range []struct {
		spec TargetSpec
		want string
	}{
		{TargetSpec{Time: "2026-11-22T18:04:05Z", LSN: "0/1"}, "at most one of"},
		{TargetSpec{XID: "5", Immediate: true}, "at most one of"},
		{TargetSpec{Time: "2026-11-22 18:04:05"}, "with a zone"},
		{TargetSpec{Time: "0001-01-01T00:30:00+01:00"}, "outside what PostgreSQL accepts"},
		{TargetSpec{LSN: "3000028"}, "--target-lsn"},
		{TargetSpec{XID: "0x10"}, "not a transaction ID"},
		{TargetSpec{XID: "-1"}, "not a transaction ID"},
		{TargetSpec{Name: strings.Repeat("n", 64)}, "at most 63 bytes"},
		{TargetSpec{Name: "a\x00b"}, "no NUL"},
		{TargetSpec{Immediate: true, Action: "resume"}, "--target-action"},
		{TargetSpec{Action: "promote"}, "needs a recovery target"},
		{TargetSpec{Timeline: "0"}, "--target-timeline"},
		{TargetSpec{Timeline: "newest"}, "--target-timeline"},
		{TargetSpec{Timeline: "0x3"}, "--target-timeline"},
		{TargetSpec{Timeline: "09"}, "--target-timeline"}, // PostgreSQL reads 0-prefixed as octal
	} {
		if got, err := ParseTarget(tc.spec); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseTarget(%+v) = %+v, %v; want an error with %q", tc.spec, got, err, tc.want)
		}
	}
}

func TestTargetKindString(t *testing.T) {
	for k, want := range map[TargetKind]string{TargetLatest: "latest", TargetImmediate: "immediate", TargetTime: "time",
		TargetLSN: "lsn", TargetXID: "xid", TargetName: "name"} {
		if k.String() != want {
			t.Errorf("%d: %q, want %q", int(k), k.String(), want)
		}
	}
}

func TestChooseBackup(t *testing.T) {
	t0 := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	backups := []repo.Summary{
		{ID: "a", StopTime: t0, StopLSN: "0/2000000"},
		{ID: "b", StopTime: t0.Add(time.Hour), StopLSN: "0/5000000"},
		{ID: "c", StopTime: t0.Add(2 * time.Hour), StopLSN: "0/9000000"},
	}
	parse := func(s TargetSpec) Target {
		tg, err := ParseTarget(s)
		if err != nil {
			t.Fatal(err)
		}
		return tg
	}
	for _, tc := range []struct {
		id   string
		t    Target
		want string
	}{
		{"", Target{}, "c"},
		{"latest", parse(TargetSpec{Immediate: true}), "c"},
		{"a", Target{}, "a"},
		{"", parse(TargetSpec{Time: "2026-11-22T13:30:00Z"}), "b"},
		{"", parse(TargetSpec{Time: "2026-11-22T13:00:00Z"}), "b"}, // ended exactly at the target
		{"", parse(TargetSpec{LSN: "0/8FFFFFF"}), "b"},
		{"", parse(TargetSpec{LSN: "0/9000000"}), "c"},
		{"", parse(TargetSpec{XID: "900"}), "c"}, // no order known: the newest
	} {
		got, err := ChooseBackup(backups, tc.id, tc.t)
		if err != nil || got.ID != tc.want {
			t.Errorf("ChooseBackup(%q, %+v) = %s, %v; want %s", tc.id, tc.t, got.ID, err, tc.want)
		}
	}
	if _, err := ChooseBackup(backups, "", parse(TargetSpec{Time: "2026-11-22T11:59:59Z"})); !errors.Is(err, ErrBeforeWindow) {
		t.Errorf("target before the oldest backup: %v, want ErrBeforeWindow", err)
	}
	if _, err := ChooseBackup(backups, "", parse(TargetSpec{LSN: "0/1FFFFFF"})); !errors.Is(err, ErrBeforeWindow) {
		t.Errorf("LSN before the oldest backup: %v, want ErrBeforeWindow", err)
	}
	if _, err := ChooseBackup(backups, "zz", Target{}); !errors.Is(err, repo.ErrBackupNotFound) {
		t.Errorf("unknown ID: %v, want ErrBackupNotFound", err)
	}
	if _, err := ChooseBackup(nil, "", Target{}); err == nil {
		t.Error("empty repository: no error")
	}
}

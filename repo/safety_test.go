package repo

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/fs"
)

// The first writer binds the system identifier; a second system is
// refused, also through a host's note and after reopening.
func TestBindSystem(t *testing.T) {
	ctx := context.Background()
	r := testRepo(t)
	if got, _ := r.BoundSystem(ctx); got != "" {
		t.Fatalf("fresh repository bound to %q", got)
	}
	r.SetBindingCache(t.TempDir())
	if err := r.BindSystem(ctx, 111); err != nil {
		t.Fatal(err)
	}
	if err := r.BindSystem(ctx, 111); err != nil {
		t.Fatalf("same system refused: %v", err)
	}
	if err := r.BindSystem(ctx, 222); !errors.Is(err, ErrForeignSystem) {
		t.Fatalf("second system: %v", err)
	}
	r2, err := Open(ctx, r.backend, OpenOptions{CompressionLevel: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.BindSystem(ctx, 222); !errors.Is(err, ErrForeignSystem) {
		t.Fatalf("second system after reopen: %v", err)
	}
	if got, _ := r2.BoundSystem(ctx); got != "111" {
		t.Fatalf("bound to %q", got)
	}
}

// Repositories have an ID, and re-initialising a location gives another.
func TestRepositoryID(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b, _ := fs.Create(dir)
	Init(ctx, b, InitOptions{CompressionLevel: 1, Now: time.Now()})
	r1, _ := Open(ctx, b, OpenOptions{CompressionLevel: -1})
	b.Delete(ctx, ConfigObject)
	Init(ctx, b, InitOptions{CompressionLevel: 1, Now: time.Now()})
	r2, _ := Open(ctx, b, OpenOptions{CompressionLevel: -1})
	if r1.ID() == "" || r1.ID() == r2.ID() {
		t.Fatalf("ids %q %q", r1.ID(), r2.ID())
	}
	// A config without an ID (older pgkeep) gets a stable derived one.
	old := &Repository{rawConfig: []byte(`{"format":1}`)}
	if !strings.HasPrefix(old.ID(), "cfg-") || old.ID() != (&Repository{rawConfig: []byte(`{"format":1}`)}).ID() {
		t.Fatalf("derived id %q", old.ID())
	}
}

// A host whose recipient the repository does not record cannot write.
func TestForeignRecipientRefused(t *testing.T) {
	ctx := context.Background()
	b, _ := fs.Create(t.TempDir())
	mine, _ := age.GenerateX25519Identity()
	other, _ := age.GenerateX25519Identity()
	if _, err := Init(ctx, b, InitOptions{CompressionLevel: 1, Keys: Keys{Recipients: []age.Recipient{mine.Recipient()}}}); err != nil {
		t.Fatal(err)
	}
	good, _ := Open(ctx, b, OpenOptions{CompressionLevel: -1, Keys: Keys{Recipients: []age.Recipient{mine.Recipient()}}})
	if err := good.PutObject(ctx, "x", []byte("a"), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	bad, _ := Open(ctx, b, OpenOptions{CompressionLevel: -1, Keys: Keys{Recipients: []age.Recipient{other.Recipient()}}})
	if err := bad.PutObject(ctx, "y", []byte("a"), storage.PutOptions{}); !errors.Is(err, ErrRecipientNotAccepted) {
		t.Fatalf("foreign recipient: %v", err)
	}
	if _, err := b.Stat(ctx, "y"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatal("a refused object was stored")
	}

	// A repository initialised before recipients were recorded binds the
	// first writer's.
	b2, _ := fs.Create(t.TempDir())
	Init(ctx, b2, InitOptions{CompressionLevel: 1, Keys: Keys{Recipients: []age.Recipient{mine.Recipient()}}})
	cfg, _ := ReadConfig(ctx, b2)
	cfg.Recipients = nil
	legacy := &Repository{backend: b2, Config: cfg, keys: Keys{Recipients: []age.Recipient{mine.Recipient()}}, codec: &Codec{Level: 1, Recipients: []age.Recipient{mine.Recipient()}}}
	if err := legacy.CheckWritable(ctx); err != nil {
		t.Fatal(err)
	}
	foreign := &Repository{backend: b2, Config: cfg, keys: Keys{Recipients: []age.Recipient{other.Recipient()}}, codec: &Codec{Level: 1}}
	if err := foreign.CheckWritable(ctx); !errors.Is(err, ErrRecipientNotAccepted) {
		t.Fatalf("legacy repository, foreign recipient: %v", err)
	}
}

// Retention bounds what users give it instead of overflowing.
func TestRetentionBounds(t *testing.T) {
	ctx := context.Background()
	r := testRepo(t)
	now := time.Now()
	commitFake(t, r, "20260101T000000Z-0001", 5, now.Add(-3*time.Hour))
	commitFake(t, r, "20260101T020000Z-0002", 20, now.Add(-time.Hour))
	for _, o := range []RetentionOptions{
		{RetainDays: 106752}, {RetainFull: -1}, {RetainFull: MaxRetainFull + 1},
		{RetainFull: 1, DebrisMinAge: -time.Second},
	} {
		o.Now = now
		if _, err := r.PlanRetention(ctx, o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
	plan, err := r.PlanRetention(ctx, RetentionOptions{RetainDays: MaxRetainDays, Now: now})
	if err != nil || len(plan.Backups) != 0 {
		t.Fatalf("a 100-year window deletes %v (%v)", plan.Backups, err)
	}
}

// The newest backup is the one furthest along in WAL, whatever the clock
// said when it started.
func TestBackupsOrderedByWAL(t *testing.T) {
	ctx := context.Background()
	r := testRepo(t)
	now := time.Now()
	commitFake(t, r, "20300101T000000Z-fast", 5, now.Add(24*time.Hour)) // clock ran fast
	commitFake(t, r, "20260101T000000Z-late", 20, now)
	backups, _, err := r.ListBackups(ctx)
	if err != nil || len(backups) != 2 || backups[1].ID != "20260101T000000Z-late" {
		t.Fatalf("order: %+v %v", backups, err)
	}
	plan, err := r.PlanRetention(ctx, RetentionOptions{RetainFull: 1, Now: now})
	if err != nil || len(plan.Backups) != 1 || plan.Backups[0] != "20300101T000000Z-fast" {
		t.Fatalf("retain-full 1 deletes %v (%v)", plan.Backups, err)
	}
}

// A segment past a newer timeline's fork from its timeline is diverged.
func TestCheckNotDiverged(t *testing.T) {
	ctx := context.Background()
	r := testRepo(t)
	fork := pg.LSN(10*segSize + 0x1234)
	hist := []byte("1\t" + fork.String() + "\tno recovery target specified\n")
	h, _ := pg.ParseWALFileName("00000002.history")
	if err := r.PutObject(ctx, WALObjectName(h), hist, storage.PutOptions{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	for seg, want := range map[int]bool{9: false, 10: true, 11: true} {
		wf, _ := pg.ParseWALFileName(segName(seg))
		err := r.CheckNotDiverged(ctx, wf, segSize)
		if got := errors.Is(err, ErrDiverged); got != want {
			t.Errorf("segment %d: diverged=%v (%v), want %v", seg, got, err, want)
		}
	}
	// Timeline 2's own segments are not affected.
	wf, _ := pg.ParseWALFileName("00000002" + segName(11)[8:])
	if err := r.CheckNotDiverged(ctx, wf, segSize); err != nil {
		t.Fatal(err)
	}
}

// A backup whose pack vanished before commit is not committed.
func TestCommitRefusesMissingPack(t *testing.T) {
	ctx := context.Background()
	r := testRepo(t)
	id := "20260101T000000Z-0009"
	if err := r.PutObject(ctx, PackName(id, 0), []byte("pack"), storage.PutOptions{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	info, _ := r.backend.Stat(ctx, PackName(id, 0))
	m := &Manifest{Summary: Summary{ID: id, StartLSN: "0/5000028", Timeline: 1}, Packs: []Pack{{Name: PackName(id, 0), Size: info.Size}}}
	r.backend.Delete(ctx, PackName(id, 0))
	if err := r.CommitBackup(ctx, m); err == nil || !strings.Contains(err.Error(), "is gone") {
		t.Fatalf("commit without its pack: %v", err)
	}
	if backups, _, _ := r.ListBackups(ctx); len(backups) != 0 {
		t.Fatal("backup listed")
	}
}

// A backup is on a timeline's path exactly when PostgreSQL would accept
// it, including the history a rollback leaves (a fork below the forked
// timeline's own beginning).
func TestOnTimelinePath(t *testing.T) {
	lsn := func(s string) pg.LSN { l, _ := pg.ParseLSN(s); return l }
	h3 := []pg.TimelineSwitch{{Parent: 1, Switch: lsn("0/9000000")}, {Parent: 2, Switch: lsn("0/502E618")}}
	h2 := h3[:1]
	b := func(tli uint32, start, stop string) Summary {
		return Summary{Timeline: tli, StartLSN: start, StopLSN: stop}
	}
	for _, c := range []struct {
		b    Summary
		tli  uint32
		hist []pg.TimelineSwitch
		want bool
	}{
		{b(1, "0/2000028", "0/2000100"), 3, h3, true},  // before the rollback target
		{b(1, "0/6000028", "0/6000100"), 3, h3, false}, // after it: abandoned
		{b(1, "0/6000028", "0/6000100"), 2, h2, true},  // but on timeline 2's path
		{b(1, "0/8FFF000", "0/9000100"), 2, h2, false}, // consistent only past the switch
		{b(2, "0/9100000", "0/9200000"), 3, h3, false}, // timeline 2 is hidden entirely
		{b(3, "0/6000028", "0/6000100"), 3, h3, true},
		{b(2, "0/9100000", "0/9200000"), 2, h2, true},
		{b(1, "0/2000028", "0/2000100"), 1, nil, true},
		{b(2, "0/2000028", "0/2000100"), 1, nil, false},
	} {
		if got := OnTimelinePath(c.b, c.tli, c.hist); got != c.want {
			t.Errorf("backup %+v along timeline %d: %v, want %v", c.b, c.tli, got, c.want)
		}
	}
}

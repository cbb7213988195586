package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/pgkeep/pgkeep/internal/pgtest"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/fs"
	"github.com/pgkeep/pgkeep/storage/s3"
)

var walStatsRE = regexp.MustCompile(`WAL: (\d+) object\(s\) checked, (\d+) read, (\d+) from cache, (\d+) bad`)

// walStats parses verify's WAL line: objects, read, from cache, bad.
func walStats(t *testing.T, out string) [4]int {
	t.Helper()
	m := walStatsRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("verify printed no WAL count line:\n%s", out)
	}
	var n [4]int
	for i := range n {
		n[i], _ = strconv.Atoi(m[i+1])
	}
	return n
}

// withCache points verify's cache (the default location,
// $XDG_CACHE_HOME/pgkeep) into the test's directory.
func withCache(r *testRepo) {
	cache := filepath.Join(r.dir, "cache")
	r.env = append(r.env, "XDG_CACHE_HOME="+cache)
}

// archivedSegments returns the archived segment objects (fs repository)
// after the backup's start segment, oldest first.
func archivedSegments(t *testing.T, r *testRepo, after string) []string {
	t.Helper()
	all, _ := filepath.Glob(filepath.Join(r.repoDir, "wal", "*", "*"))
	var segs []string
	for _, p := range all {
		if b := filepath.Base(p); len(b) == 24 && b > after {
			segs = append(segs, p)
		}
	}
	sort.Strings(segs)
	return segs
}

func startWAL(t *testing.T, r *testRepo, id string) string {
	t.Helper()
	out := r.run(t, "backup", "show", id, "--json")
	m := regexp.MustCompile(`"start_wal": "([0-9A-F]{24})"`).FindStringSubmatch(out.stdout)
	if m == nil {
		t.Fatalf("backup show: %s %s", out.stdout, out.stderr)
	}
	return m[1]
}

// linesNaming returns verify's output lines that name object.
func linesNaming(out, object string) []string {
	var got []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, object) {
			got = append(got, l)
		}
	}
	return got
}

// openTestRepo opens r's fs repository in the test process with the given
// keys (as another host would).
func openTestRepo(t *testing.T, r *testRepo, keys repo.Keys) *repo.Repository {
	t.Helper()
	b, err := fs.New(r.repoDir)
	if err != nil {
		t.Fatal(err)
	}
	rr, err := repo.Open(context.Background(), b, repo.OpenOptions{Keys: keys, CompressionLevel: -1})
	if err != nil {
		t.Fatal(err)
	}
	return rr
}

func identityKeys(t *testing.T, path string) repo.Keys {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := age.ParseIdentities(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	k := repo.Keys{Identities: ids}
	for _, id := range ids {
		if x, ok := id.(*age.X25519Identity); ok {
			k.Recipients = append(k.Recipients, x.Recipient())
		}
	}
	return k
}

// TestVerifyReadsWALFS: verify reads every archived segment. A truncated,
// a bit-flipped, an unreadable segment and one encrypted to a key the
// repository's identity cannot open each give one line naming the object
// and the cause, a non-zero exit, and nothing in the repository changes. A
// second verify reads no WAL object (they are cached), a changed one is
// read again.
func TestVerifyReadsWALFS(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs", encrypted: true})
	withCache(r)
	c, id := seeded(t, r)
	last := switchSegments(t, c, 6, 2000)
	waitArchived(t, c, last, time.Minute)
	segs := archivedSegments(t, r, startWAL(t, r, id))
	if len(segs) < 5 {
		t.Fatalf("archived segments after the backup's start: %v", segs)
	}

	t.Run("clean", func(t *testing.T) {
		if v := r.run(t, "verify"); v.code != 0 {
			t.Fatalf("verify of a clean repository: exit %d\n%s%s", v.code, v.stdout, v.stderr)
		}
	})

	t.Run("bad objects", func(t *testing.T) {
		type fault struct {
			path, cause string
			orig        []byte
			mode        os.FileMode
		}
		faults := map[string]*fault{}
		for i, what := range []string{"truncated", "bit-flipped", "unreadable", "foreign key"} {
			p := segs[i]
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			fi, _ := os.Stat(p)
			faults[what] = &fault{path: p, orig: data, mode: fi.Mode().Perm()}
		}
		faults["truncated"].cause = "corrupt or truncated"
		os.Truncate(faults["truncated"].path, int64(len(faults["truncated"].orig)/2))
		faults["bit-flipped"].cause = "corrupt or truncated"
		flip := append([]byte(nil), faults["bit-flipped"].orig...)
		flip[len(flip)/2] ^= 0x10
		os.WriteFile(faults["bit-flipped"].path, flip, 0)
		faults["unreadable"].cause = "permission denied"
		os.Chmod(faults["unreadable"].path, 0)
		faults["foreign key"].cause = "wrong key"
		pushForeign(t, r, c, faults["foreign key"].path)

		before := snapshot(t, r.repoDir)
		v := r.run(t, "verify")
		if v.code == 0 {
			t.Errorf("verify with bad WAL objects exited 0:\n%s", v.stdout)
		}
		for what, f := range faults {
			name := filepath.Base(f.path)
			got := linesNaming(v.stdout, name)
			if len(got) != 1 || !strings.HasPrefix(got[0], "wal/"+name[:16]+"/"+name+": ") || !strings.Contains(got[0], f.cause) {
				t.Errorf("%s segment %s: lines %q, want one naming it and %q", what, name, got, f.cause)
			}
		}
		if n := walStatsRE.FindStringSubmatch(v.stdout); n == nil || n[4] != "4" {
			t.Errorf("WAL count line: %q", n)
		}
		if after := snapshot(t, r.repoDir); after != before {
			t.Errorf("verify changed the repository")
		}
		for _, f := range faults {
			os.WriteFile(f.path, f.orig, 0)
			os.Chmod(f.path, f.mode)
			pgtest.Chown(t, f.path)
		}
		if v := r.run(t, "verify"); v.code != 0 {
			t.Fatalf("verify after repair: exit %d\n%s", v.code, v.stdout)
		}
	})

	t.Run("cache", func(t *testing.T) {
		r.mustRun(t, "verify")
		v := r.run(t, "verify")
		n := walStats(t, v.stdout)
		if v.code != 0 || n[0] < len(segs) || n[1] != 0 || n[2] != n[0] {
			t.Fatalf("second verify read WAL again: exit %d, %v\n%s", v.code, n, v.stdout)
		}
		// A changed object is read again (and found bad).
		p := segs[len(segs)-1]
		orig, _ := os.ReadFile(p)
		bad := append([]byte(nil), orig...)
		bad[len(bad)-10] ^= 0x01
		os.WriteFile(p, bad, 0)
		v = r.run(t, "verify")
		if got := walStats(t, v.stdout); v.code == 0 || got[1] != 1 || got[3] != 1 || len(linesNaming(v.stdout, filepath.Base(p))) != 1 {
			t.Fatalf("changed object: exit %d, %v\n%s", v.code, got, v.stdout)
		}
		os.WriteFile(p, orig, 0)
		if v := r.run(t, "verify", "--no-cache"); v.code != 0 || walStats(t, v.stdout)[1] != n[0] {
			t.Fatalf("--no-cache: exit %d\n%s", v.code, v.stdout)
		}
	})
}

// pushForeign replaces the archived segment at obj with the same segment
// pushed by a host whose config has another age recipient (a second
// config pointing at the same repository). Should wal-push refuse the
// foreign recipient, the object is written as such a host did before.
func pushForeign(t *testing.T, r *testRepo, c *pgtest.Cluster, obj string) {
	t.Helper()
	name := filepath.Base(obj)
	src, err := os.ReadFile(filepath.Join(c.DataDir, "pg_wal", name))
	if err != nil {
		t.Fatalf("segment %s no longer in pg_wal: %v", name, err)
	}
	other := filepath.Join(r.dir, "other-identity.txt")
	recipient := strings.TrimSpace(r.mustRun(t, "keygen", "--output", other))
	cfg := filepath.Join(r.dir, "foreign.yml")
	os.WriteFile(cfg, []byte("repository: file://"+r.repoDir+"\nencryption:\n  recipients: ["+recipient+"]\n"), 0o644)
	walDir := filepath.Join(pgtest.TempDir(t), "pg_wal")
	os.MkdirAll(walDir, 0o700)
	os.WriteFile(filepath.Join(walDir, name), src, 0o600)
	pgtest.Chown(t, filepath.Dir(walDir))
	if err := os.Remove(obj); err != nil {
		t.Fatal(err)
	}
	res := runPgkeep(t, []string{"PGKEEP_CONFIG=" + cfg}, "", "wal-push", filepath.Join(walDir, name))
	if res.code == 0 {
		return
	}
	// wal-push refuses a recipient the repository does not record; an
	// older pgkeep did not, and its objects may be in a repository.
	t.Logf("wal-push with a foreign recipient refused (%s); storing the object as an older pgkeep did", strings.TrimSpace(res.stderr))
	id, _ := age.GenerateX25519Identity()
	codec := &repo.Codec{Level: 1, Recipients: []age.Recipient{id.Recipient()}}
	var enc bytes.Buffer
	if err := codec.Encode(&enc, bytes.NewReader(src), int64(len(src)), sha256.Sum256(src)); err != nil {
		t.Fatal(err)
	}
	b, err := fs.New(r.repoDir)
	if err != nil {
		t.Fatal(err)
	}
	rel, _ := filepath.Rel(r.repoDir, obj)
	if err := b.Put(context.Background(), filepath.ToSlash(rel), &enc, storage.PutOptions{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	pgtest.Chown(t, obj)
}

// TestVerifySummaryAndManifest: a backup.json swapped with another
// backup's, and a manifest re-encoded with changed content (it decodes
// fine, but does not match manifest_sha256), are named by verify and
// refused by restore, which writes nothing.
func TestVerifySummaryAndManifest(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "fs", encrypted: true})
	withCache(r)
	c, a := seeded(t, r)
	b := takeBackup(t, r, c)
	r.mustRun(t, "verify")

	t.Run("swapped backup.json", func(t *testing.T) {
		sa := filepath.Join(r.repoDir, "backups", a, "backup.json")
		orig, _ := os.ReadFile(sa)
		other, _ := os.ReadFile(filepath.Join(r.repoDir, "backups", b, "backup.json"))
		os.WriteFile(sa, other, 0)
		defer os.WriteFile(sa, orig, 0)
		v := r.run(t, "verify")
		got := linesNaming(v.stdout, "backup.json")
		if v.code == 0 || len(got) != 1 || !strings.HasPrefix(got[0], a+": ") || !strings.Contains(got[0], b) {
			t.Errorf("verify with a swapped backup.json: exit %d\n%s", v.code, v.stdout)
		}
		dir := pgtest.MkdirFor(t, filepath.Join(pgtest.TempDir(t), "x"))
		res := r.run(t, "restore", "--pgdata", dir, "--backup", a)
		if res.code == 0 || !strings.Contains(res.stderr, "backup.json") {
			t.Errorf("restore with a swapped backup.json: exit %d %q", res.code, res.stderr)
		}
	})

	t.Run("tampered manifest", func(t *testing.T) {
		rr := openTestRepo(t, r, identityKeys(t, r.identity))
		ctx := context.Background()
		name := "backups/" + a + "/manifest"
		path := filepath.Join(r.repoDir, filepath.FromSlash(name))
		orig, _ := os.ReadFile(path)
		var plain bytes.Buffer
		if _, err := rr.GetObject(ctx, name, &plain); err != nil {
			t.Fatal(err)
		}
		// Every file mode 0600 becomes 0644: a valid manifest, not the one
		// the backup wrote.
		changed := bytes.ReplaceAll(plain.Bytes(), []byte(`"mode":384`), []byte(`"mode":420`))
		if bytes.Equal(changed, plain.Bytes()) {
			t.Fatal("nothing to tamper with")
		}
		if err := rr.PutObject(ctx, name, changed, storage.PutOptions{}); err != nil {
			t.Fatal(err)
		}
		pgtest.Chown(t, path)
		defer func() { os.WriteFile(path, orig, 0) }()
		v := r.run(t, "verify")
		got := linesNaming(v.stdout, "manifest_sha256")
		if v.code == 0 || len(got) != 1 || !strings.HasPrefix(got[0], a+": ") {
			t.Errorf("verify with a tampered manifest: exit %d\n%s", v.code, v.stdout)
		}
		dir := pgtest.MkdirFor(t, filepath.Join(pgtest.TempDir(t), "x"))
		res := r.run(t, "restore", "--pgdata", dir, "--backup", a)
		if res.code == 0 || !strings.Contains(res.stderr, "manifest_sha256") {
			t.Errorf("restore with a tampered manifest: exit %d %q", res.code, res.stderr)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("restore of a tampered manifest wrote %d entries", len(entries))
		}
	})

	if v := r.run(t, "verify"); v.code != 0 {
		t.Fatalf("verify after repair: exit %d\n%s", v.code, v.stdout)
	}
}

// TestVerifyReadsWALS3: the same against MinIO: a truncated segment object
// is named, a clean repository verifies, and a second verify takes every
// WAL object from the cache (by ETag) while a replaced one is read again.
func TestVerifyReadsWALS3(t *testing.T) {
	r := newRepo(t, repoOpts{kind: "s3"})
	withCache(r)
	c, _ := seeded(t, r)
	last := switchSegments(t, c, 3, 2000)
	waitArchived(t, c, last, time.Minute)
	b := r.s3.Backend(t, r.bucket, "cluster1", s3.Options{})
	ctx := context.Background()
	obj := "wal/" + last[:16] + "/" + last
	rc, err := b.Get(ctx, obj)
	if err != nil {
		t.Fatal(err)
	}
	var orig bytes.Buffer
	orig.ReadFrom(rc)
	rc.Close()

	if v := r.run(t, "verify"); v.code != 0 {
		t.Fatalf("clean: exit %d\n%s%s", v.code, v.stdout, v.stderr)
	}
	if err := b.Put(ctx, obj, bytes.NewReader(orig.Bytes()[:orig.Len()/2]), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	v := r.run(t, "verify")
	got := linesNaming(v.stdout, last)
	if v.code == 0 || len(got) != 1 || !strings.HasPrefix(got[0], obj+": ") || !strings.Contains(got[0], "truncated") {
		t.Fatalf("truncated object: exit %d\n%s", v.code, v.stdout)
	}
	if n := walStats(t, v.stdout); n[1] != 1 || n[3] != 1 || n[2] != n[0]-1 {
		t.Fatalf("truncated object: counts %v", n)
	}
	if err := b.Put(ctx, obj, bytes.NewReader(orig.Bytes()), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	v = r.run(t, "verify")
	if n := walStats(t, v.stdout); v.code != 0 || n[1] != 1 {
		t.Fatalf("after repair (the replaced object is read again): exit %d %v\n%s", v.code, n, v.stdout)
	}
	v = r.run(t, "verify")
	if n := walStats(t, v.stdout); v.code != 0 || n[1] != 0 || n[2] != n[0] {
		t.Fatalf("another verify read WAL again: %v\n%s", n, v.stdout)
	}
}

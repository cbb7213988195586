package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/fs"
)

const (
	vSegSize = 1 << 20
	vSysid   = 7714298854777892457
)

// fakeSegment is a segment as PostgreSQL writes it: a long page header at
// the start, then (here) filler.
func fakeSegment(tli uint32, segno uint64, sysid uint64) []byte {
	b := make([]byte, vSegSize)
	le := binary.LittleEndian
	le.PutUint16(b[0:], pg.WALPageMagic15)
	le.PutUint16(b[2:], pg.XLPLongHeader)
	le.PutUint32(b[4:], tli)
	le.PutUint64(b[8:], segno*vSegSize)
	le.PutUint64(b[24:], sysid)
	le.PutUint32(b[32:], vSegSize)
	le.PutUint32(b[36:], 8192)
	for i := 40; i < len(b); i += 97 {
		b[i] = byte(i / 97)
	}
	return b
}

func vSegName(tli uint32, segno uint64) string {
	per := uint64(pg.SegmentsPerLog(vSegSize))
	return pg.SegmentName(tli, uint32(segno/per), uint32(segno%per))
}

func walObj(t *testing.T, name string) string {
	t.Helper()
	wf, err := pg.ParseWALFileName(name)
	if err != nil {
		t.Fatal(err)
	}
	return WALObjectName(wf)
}

type verifyFixture struct {
	root string
	r    *Repository
	id   *age.X25519Identity
}

// encryptedRepo is a repository bound to vSysid, encrypted to one age
// key, holding segments 1..n of timeline 1 and one backup from segment 1.
func encryptedRepo(t *testing.T, n int) *verifyFixture {
	t.Helper()
	ctx := context.Background()
	root := t.TempDir()
	b, err := fs.Create(root)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := age.GenerateX25519Identity()
	keys := Keys{Recipients: []age.Recipient{id.Recipient()}, Identities: []age.Identity{id}}
	if _, err := Init(ctx, b, InitOptions{CompressionLevel: 1, Keys: keys, SystemIdentifier: vSysid, Now: time.Now()}); err != nil {
		t.Fatal(err)
	}
	r, err := Open(ctx, b, OpenOptions{Keys: keys, CompressionLevel: -1})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		if err := r.PutObject(ctx, walObj(t, vSegName(1, uint64(i))), fakeSegment(1, uint64(i), vSysid), storage.PutOptions{IfAbsent: true}); err != nil {
			t.Fatal(err)
		}
	}
	m := &Manifest{Summary: Summary{ID: "20260101T000000Z-aaaa", StartTime: time.Now(), StartLSN: "0/100028",
		StartWAL: vSegName(1, 1), StopWAL: vSegName(1, 2), SegmentSize: vSegSize, Timeline: 1, SystemIdentifier: fmt.Sprint(vSysid)}}
	if err := r.CommitBackup(ctx, m); err != nil {
		t.Fatal(err)
	}
	return &verifyFixture{root, r, id}
}

func (f *verifyFixture) path(name string) string {
	return filepath.Join(f.root, filepath.FromSlash(name))
}

// tree lists every file of the repository with size, mode and content hash.
func tree(t *testing.T, root string) string {
	t.Helper()
	var lines []string
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return nil
		}
		data, _ := os.ReadFile(p)
		lines = append(lines, fmt.Sprintf("%s %d %v %x %d", p, fi.Size(), fi.Mode(), sha256.Sum256(data), fi.ModTime().UnixNano()))
		return nil
	})
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func problemsFor(rep VerifyReport, object string) []string {
	var out []string
	for _, p := range rep.Problems {
		if p.Object == object || strings.Contains(p.What, object) {
			out = append(out, p.String())
		}
	}
	return out
}

func TestVerifyReadsWAL(t *testing.T) {
	ctx := context.Background()
	f := encryptedRepo(t, 8)
	cache, err := OpenVerifyCache(t.TempDir(), f.r)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := f.r.Verify(ctx, VerifyOptions{Cache: cache})
	if err != nil || len(rep.Problems) > 0 {
		t.Fatalf("clean repository: %v %v", err, rep.Problems)
	}
	if rep.WAL != (WALStats{Objects: 8, Read: 8}) {
		t.Fatalf("first verify: %+v", rep.WAL)
	}

	// Faults, one per object.
	truncated := walObj(t, vSegName(1, 2))
	data, _ := os.ReadFile(f.path(truncated))
	os.WriteFile(f.path(truncated), data[:len(data)/2], 0o640)

	flipped := walObj(t, vSegName(1, 3))
	data, _ = os.ReadFile(f.path(flipped))
	data[len(data)-100] ^= 0x01
	os.WriteFile(f.path(flipped), data, 0o640)

	foreignSys := walObj(t, vSegName(1, 4))
	os.Remove(f.path(foreignSys))
	f.r.PutObject(ctx, foreignSys, fakeSegment(1, 4, vSysid+1), storage.PutOptions{IfAbsent: true})

	foreignKey := walObj(t, vSegName(1, 5))
	os.Remove(f.path(foreignKey))
	other, _ := age.GenerateX25519Identity()
	fr, err := Open(ctx, f.r.backend, OpenOptions{Keys: Keys{Recipients: []age.Recipient{other.Recipient()}}, CompressionLevel: -1})
	if err != nil {
		t.Fatal(err)
	}
	// As an older pgkeep, which did not check recipients, would have.
	fr.writableChecked = true
	if err := fr.PutObject(ctx, foreignKey, fakeSegment(1, 5, vSysid), storage.PutOptions{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}

	notWAL := walObj(t, vSegName(1, 6))
	os.Remove(f.path(notWAL))
	f.r.PutObject(ctx, notWAL, bytes.Repeat([]byte("not wal "), vSegSize/8), storage.PutOptions{IfAbsent: true})

	wrongName := walObj(t, vSegName(1, 7))
	os.Remove(f.path(wrongName))
	f.r.PutObject(ctx, wrongName, fakeSegment(1, 8, vSysid), storage.PutOptions{IfAbsent: true})

	before := tree(t, f.root)
	rep, err = f.r.Verify(ctx, VerifyOptions{Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		truncated:  "corrupt or truncated",
		flipped:    "corrupt or truncated",
		foreignSys: fmt.Sprintf("segment of database system %d, but the repository belongs to %d", vSysid+1, vSysid),
		foreignKey: "no configured age identity can decrypt the object",
		notWAL:     "not a WAL segment",
		wrongName:  "first page is at",
	}
	for obj, cause := range want {
		got := problemsFor(rep, obj)
		if len(got) != 1 || !strings.HasPrefix(got[0], obj+": ") || !strings.Contains(got[0], cause) {
			t.Errorf("%s: problems %q, want one line naming it and %q", obj, got, cause)
		}
	}
	if len(rep.Problems) != len(want) {
		t.Errorf("problems: %q", rep.Problems)
	}
	if rep.WAL != (WALStats{Objects: 8, Read: 6, Cached: 2, Bad: 6}) {
		t.Errorf("stats with faults: %+v", rep.WAL)
	}
	if after := tree(t, f.root); after != before {
		t.Errorf("verify changed the repository:\n%s\n---\n%s", before, after)
	}

	// Bad objects are read again each time, and none is taken from the cache.
	rep, _ = f.r.Verify(ctx, VerifyOptions{Cache: cache})
	if rep.WAL.Bad != 6 || rep.WAL.Cached != 2 {
		t.Errorf("second verify with faults: %+v", rep.WAL)
	}

	// Without an identity: one line says what could not be checked.
	nk, _ := Open(ctx, f.r.backend, OpenOptions{CompressionLevel: -1})
	rep, _ = nk.Verify(ctx, VerifyOptions{})
	found := false
	for _, p := range rep.Problems {
		found = found || strings.Contains(p.What, "encrypted and no age identity is configured")
	}
	if !found {
		t.Errorf("no identity: %q", rep.Problems)
	}
}

func TestVerifyCache(t *testing.T) {
	ctx := context.Background()
	f := encryptedRepo(t, 4)
	dir := t.TempDir()
	open := func() *VerifyCache {
		c, err := OpenVerifyCache(dir, f.r)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for i, want := range []WALStats{{Objects: 4, Read: 4}, {Objects: 4, Cached: 4}} {
		rep, err := f.r.Verify(ctx, VerifyOptions{Cache: open()})
		if err != nil || len(rep.Problems) > 0 || rep.WAL != want {
			t.Fatalf("verify %d: %+v %v %v", i, rep.WAL, rep.Problems, err)
		}
	}
	// A replaced object (other content, same size) is read again.
	obj := walObj(t, vSegName(1, 3))
	fi, _ := os.Stat(f.path(obj))
	os.Remove(f.path(obj))
	f.r.PutObject(ctx, obj, fakeSegment(1, 3, vSysid+1), storage.PutOptions{IfAbsent: true})
	os.Chtimes(f.path(obj), fi.ModTime(), fi.ModTime())
	rep, _ := f.r.Verify(ctx, VerifyOptions{Cache: open()})
	if rep.WAL != (WALStats{Objects: 4, Read: 1, Cached: 3, Bad: 1}) || len(problemsFor(rep, obj)) != 1 {
		t.Fatalf("replaced object: %+v %q", rep.WAL, rep.Problems)
	}
	// A cache of another repository (same place, initialized again) is not used.
	other := &Repository{backend: f.r.backend, Config: f.r.Config, rawConfig: f.r.rawConfig, codec: f.r.codec}
	other.Config.Created = f.r.Config.Created.Add(time.Second)
	c, _ := OpenVerifyCache(dir, other)
	if _, ok := c.entries[walObj(t, vSegName(1, 1))]; ok {
		t.Fatal("cache of another repository used")
	}
	data, _ := os.ReadFile(open().Path())
	if !strings.Contains(string(data), f.r.backend.String()) {
		t.Fatalf("cache does not name its repository: %.200s", data)
	}
}

func TestVerifySwappedSummaryAndManifest(t *testing.T) {
	ctx := context.Background()
	f := encryptedRepo(t, 3)
	a := "20260101T000000Z-aaaa"
	b := "20260102T000000Z-bbbb"
	m := &Manifest{Summary: Summary{ID: b, StartTime: time.Now(), StartLSN: "0/200028",
		StartWAL: vSegName(1, 2), StopWAL: vSegName(1, 3), SegmentSize: vSegSize, Timeline: 1},
		BackupLabel: "START WAL LOCATION: 0/200028"}
	if err := f.r.CommitBackup(ctx, m); err != nil {
		t.Fatal(err)
	}
	if rep, _ := f.r.Verify(ctx, VerifyOptions{}); len(rep.Problems) > 0 {
		t.Fatalf("clean: %q", rep.Problems)
	}

	// B's summary under A's name.
	sa := f.path(summaryName(a))
	orig, _ := os.ReadFile(sa)
	sb, _ := os.ReadFile(f.path(summaryName(b)))
	os.WriteFile(sa, sb, 0o640)
	rep, _ := f.r.Verify(ctx, VerifyOptions{})
	if len(rep.Problems) != 1 || rep.Problems[0].Backup != a || !strings.Contains(rep.Problems[0].What, "names backup \""+b+"\"") {
		t.Fatalf("swapped summary: %q", rep.Problems)
	}
	if _, err := f.r.ReadManifest(ctx, a); err == nil {
		t.Fatal("manifest of a backup with a swapped summary read")
	}
	os.WriteFile(sa, orig, 0o640)

	// A manifest re-encoded with other content.
	var buf bytes.Buffer
	if _, err := f.r.GetObject(ctx, manifestName(b), &buf); err != nil {
		t.Fatal(err)
	}
	tampered := bytes.Replace(buf.Bytes(), []byte("0/200028\""), []byte("0/200028\\n\""), 1)
	if bytes.Equal(tampered, buf.Bytes()) {
		t.Fatal("tamper did not apply")
	}
	if err := f.r.PutObject(ctx, manifestName(b), tampered, storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	rep, _ = f.r.Verify(ctx, VerifyOptions{})
	if len(rep.Problems) != 1 || rep.Problems[0].Backup != b || !strings.Contains(rep.Problems[0].What, "manifest_sha256") {
		t.Fatalf("tampered manifest: %q", rep.Problems)
	}
	if _, err := f.r.ReadManifest(ctx, b); err == nil || !strings.Contains(err.Error(), "manifest_sha256") {
		t.Fatalf("ReadManifest of a tampered manifest: %v", err)
	}
}

// A manifest as pgkeep wrote it before manifest_sha256 covered the stored
// bytes (it held the hash of itself with the field empty) still reads.
func TestLegacyManifestSum(t *testing.T) {
	ctx := context.Background()
	f := encryptedRepo(t, 2)
	id := "20260103T000000Z-cccc"
	m := &Manifest{Summary: Summary{Format: 1, ID: id, StartLSN: "0/100028", StartWAL: vSegName(1, 1), StopWAL: vSegName(1, 1), SegmentSize: vSegSize, Timeline: 1}}
	data, _ := json.Marshal(m)
	sum := sha256.Sum256(data)
	m.Summary.ManifestSHA256 = hex.EncodeToString(sum[:])
	data, _ = json.Marshal(m)
	f.r.PutObject(ctx, manifestName(id), data, storage.PutOptions{IfAbsent: true})
	sdata, _ := json.Marshal(m.Summary)
	f.r.backend.Put(ctx, summaryName(id), bytes.NewReader(sdata), storage.PutOptions{IfAbsent: true})
	if _, err := f.r.ReadManifest(ctx, id); err != nil {
		t.Fatal(err)
	}
	if checkManifestSum(data, strings.Repeat("0", 64)) || checkManifestSum(data, "") {
		t.Fatal("wrong sum accepted")
	}
}

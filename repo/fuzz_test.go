package repo

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
)

var fuzzID, _ = age.GenerateX25519Identity()

func fuzzObjects(f *testing.F) [][]byte {
	var out [][]byte
	for _, c := range []*Codec{
		{Level: 3},
		{Level: 0},
		{Level: 1, Recipients: []age.Recipient{fuzzID.Recipient()}},
	} {
		var buf bytes.Buffer
		if err := c.EncodeBytes(&buf, []byte("1\t0/3000158\tno recovery target specified\n")); err != nil {
			f.Fatal(err)
		}
		out = append(out, buf.Bytes())
	}
	return out
}

// FuzzReadHeader: an accepted header is exactly the bytes it was read from.
func FuzzReadHeader(f *testing.F) {
	for _, o := range fuzzObjects(f) {
		f.Add(o[:headerSize])
	}
	f.Add(make([]byte, headerSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ReadHeader(bytes.NewReader(b))
		if err != nil {
			return
		}
		if got := h.marshal(); !bytes.Equal(got, b[:headerSize]) {
			t.Fatalf("header %+v re-marshals to %x, read from %x", h, got, b[:headerSize])
		}
	})
}

// FuzzDecode: an object decodes only to the content its header names.
func FuzzDecode(f *testing.F) {
	for _, o := range fuzzObjects(f) {
		f.Add(o)
	}
	c := &Codec{Identities: []age.Identity{fuzzID}, Concurrency: 1}
	f.Fuzz(func(t *testing.T, b []byte) {
		var out bytes.Buffer
		h, err := c.Decode(&out, bytes.NewReader(b))
		if err != nil {
			return
		}
		if int64(out.Len()) != h.Size || sha256.Sum256(out.Bytes()) != h.SHA256 {
			t.Fatalf("decoded %d bytes that do not match header %+v", out.Len(), h)
		}
	})
}

func realSummary() Summary {
	return Summary{Format: 1, ID: "20261122T180000Z-1a2b", StartTime: time.Date(2026, 11, 22, 18, 0, 0, 0, time.UTC),
		StopTime: time.Date(2026, 11, 22, 18, 1, 0, 0, time.UTC), StartLSN: "0/5000028", StopLSN: "0/5000100", Timeline: 1,
		StartWAL: "000000010000000000000005", StopWAL: "000000010000000000000005", SystemIdentifier: "7441234567890123456",
		PGVersion: 150004, SegmentSize: 16 << 20, DataChecksums: true, Host: "pg1", Role: "primary", DataSize: 30 << 20,
		StoredSize: 4 << 20, Files: 2}
}

// FuzzParseSummary: an accepted summary is the backup it is stored under
// and survives a round trip.
func FuzzParseSummary(f *testing.F) {
	s := realSummary()
	s.ManifestSHA256 = strings.Repeat("ab", 32)
	data, _ := json.MarshalIndent(s, "", "  ")
	f.Add(s.ID, data)
	f.Add("x", []byte(`{"id":"x"}`))
	f.Fuzz(func(t *testing.T, id string, data []byte) {
		s, err := parseSummary(id, data)
		if err != nil {
			if strings.Contains(err.Error(), "\n") && !strings.Contains(id, "\n") {
				t.Fatalf("multi-line error: %q", err)
			}
			return
		}
		if s.ID != id {
			t.Fatalf("summary of %q accepted as %q", s.ID, id)
		}
		again, _ := json.Marshal(s)
		s2, err := parseSummary(id, again)
		if err != nil || !reflect.DeepEqual(s.StartTime.Equal(s2.StartTime), true) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

func realManifest() []byte {
	m := Manifest{Summary: realSummary(), BackupLabel: "START WAL LOCATION: 0/5000028 (file 000000010000000000000005)\n",
		Tablespaces: []Tablespace{{OID: "16390", Location: "/srv/tblspc"}}, BlockSize: 4 << 20,
		Packs: []Pack{{Name: "backups/20261122T180000Z-1a2b/pack/000000", Size: 9000}},
		Dirs:  []Dir{{Path: "base", Mode: 0o700}, {Path: "pg_tblspc/16390", Mode: 0o700}},
		Files: []File{{Path: "base/5/16384", Size: 8192, Mode: 0o600, SHA256: strings.Repeat("cd", 32),
			Blocks: []BlockRef{{Pack: 0, Offset: 0, Length: 300, FileOffset: 0, Size: 8192}}},
			{Path: "global/pg_control", Size: 0, Mode: 0o600}}}
	data, _ := json.Marshal(m)
	return data
}

// FuzzParseManifest: a manifest parseManifest accepts is safe for restore:
// every path stays inside the data directory and every block names one of
// the backup's packs inside the file.
func FuzzParseManifest(f *testing.F) {
	f.Add(realManifest())
	f.Add(bytes.Replace(realManifest(), []byte("base/5/16384"), []byte("../../etc/passwd"), 1))
	f.Add(bytes.Replace(realManifest(), []byte(`"pack":0`), []byte(`"pack":7`), 1))
	f.Add(bytes.Replace(realManifest(), []byte(`"block_size":4194304`), []byte(`"block_size":0`), 1))
	f.Fuzz(func(t *testing.T, plain []byte) {
		var s Summary
		if json.Unmarshal(plain, &s) != nil {
			return
		}
		sum := sha256.Sum256(plain)
		s.ManifestSHA256 = hex.EncodeToString(sum[:])
		m, err := parseManifest(plain, s)
		if err != nil {
			return
		}
		root := "/pgdata"
		inside := func(p string) bool {
			j := filepath.Join(root, filepath.FromSlash(p))
			return strings.HasPrefix(j, root+"/")
		}
		for _, d := range m.Dirs {
			if !inside(d.Path) {
				t.Fatalf("directory %q outside the data directory accepted", d.Path)
			}
		}
		for _, fl := range m.Files {
			if !inside(fl.Path) {
				t.Fatalf("file %q outside the data directory accepted", fl.Path)
			}
			for _, b := range fl.Blocks {
				if b.Pack < 0 || b.Pack >= len(m.Packs) || b.Offset < 0 || b.Length <= 0 || b.FileOffset+b.Size > fl.Size {
					t.Fatalf("block %+v of %s accepted", b, fl.Path)
				}
			}
			if m.BlockSize <= 0 {
				t.Fatalf("block size %d accepted", m.BlockSize)
			}
		}
		// Tampering is caught: the same bytes with another sum are refused.
		s.ManifestSHA256 = strings.Repeat("0", 64)
		if _, err := parseManifest(plain, s); err == nil {
			t.Fatal("manifest accepted with a wrong manifest_sha256")
		}
	})
}

// FuzzParseStartRecord: an accepted start record has an LSN and segment
// size delete can compute with, and survives a round trip.
func FuzzParseStartRecord(f *testing.F) {
	f.Add([]byte(`{"start_lsn":"0/5000028","wal_segment_size":16777216,"time":"2026-11-22T18:00:00Z"}`))
	f.Add([]byte(`{"start_lsn":"0/5000028","wal_segment_size":0}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		rec, err := parseStartRecord(data)
		if err != nil {
			return
		}
		again, _ := json.Marshal(rec)
		rec2, err := parseStartRecord(again)
		if err != nil || rec2.StartLSN != rec.StartLSN || rec2.SegmentSize != rec.SegmentSize {
			t.Fatalf("round trip of %+v: %+v %v", rec, rec2, err)
		}
	})
}

package keyfile

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
)

// The file holds an identity whose recipient is the one returned, is 0600,
// and is never overwritten.
func TestGenerate(t *testing.T) {
	p := filepath.Join(t.TempDir(), "identity.txt")
	rcp, err := Generate(p)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v", fi.Mode().Perm(), err)
	}
	data, _ := os.ReadFile(p)
	ids, err := age.ParseIdentities(bytes.NewReader(data))
	if err != nil || len(ids) != 1 || ids[0].(*age.X25519Identity).Recipient().String() != rcp {
		t.Fatalf("identity file does not match recipient %s: %v", rcp, err)
	}
	if _, err := Generate(p); err == nil || !strings.HasPrefix(err.Error(), "keygen: ") {
		t.Fatalf("second keygen over the file: %v", err)
	}
	if after, _ := os.ReadFile(p); !bytes.Equal(after, data) {
		t.Fatal("the identity file was changed")
	}
}

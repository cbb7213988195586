package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWarnFileModes(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "pgkeep.yml")
	id := filepath.Join(dir, "id.txt")
	os.WriteFile(cfgPath, nil, 0o600)
	os.WriteFile(id, nil, 0o600)
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	cfg := Config{Encryption: EncryptionConfig{IdentityFile: id}}
	warnFileModes(cfg, cfgPath, log)
	if buf.Len() != 0 {
		t.Fatalf("warnings for private files: %s", buf.String())
	}
	os.Chmod(cfgPath, 0o666)
	os.Chmod(id, 0o644)
	warnFileModes(cfg, cfgPath, log)
	if out := buf.String(); !strings.Contains(out, "writable by every user") || !strings.Contains(out, "encryption.identity_file") {
		t.Fatalf("warnings: %s", out)
	}
}

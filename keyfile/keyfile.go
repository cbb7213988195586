// Package keyfile creates the age identity files pgkeep encrypts to
// (pgkeep keygen): a new X25519 identity, mode 0600, never over an
// existing file.
package keyfile

import (
	"fmt"
	"os"
	"time"

	"filippo.io/age"
)

// Generate writes a new age X25519 identity to path (created 0600, an
// existing file is refused) and returns its recipient, the public key.
func Generate(path string) (string, error) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return "", err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return "", fmt.Errorf("keygen: %w", err)
	}
	content := fmt.Sprintf("# created: %s\n# public key: %s\n%s\n",
		time.Now().UTC().Format(time.RFC3339), id.Recipient(), id)
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return "", fmt.Errorf("keygen: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", fmt.Errorf("keygen: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("keygen: %w", err)
	}
	return id.Recipient().String(), nil
}

package main

import (
	"log/slog"
	"os"
)

// warnFileModes warns about files whose permissions put the repository at
// risk: a config anyone can rewrite (it names the repository and the keys
// every hook uses) and key files others can read. Warnings, not errors: an
// archive_command that fails over a mode would stop archiving.
func warnFileModes(cfg Config, configPath string, log *slog.Logger) {
	if fi, err := os.Stat(configPath); err == nil && fi.Mode().Perm()&0o002 != 0 {
		log.Warn("the config file is writable by every user: anyone could point pgkeep at another repository or key; chmod o-w it", "file", configPath, "mode", fi.Mode().Perm().String())
	}
	for key, p := range map[string]string{
		"encryption.identity_file":   cfg.Encryption.IdentityFile,
		"encryption.passphrase_file": cfg.Encryption.PassphraseFile,
		"etcd.password_file":         cfg.Etcd.PasswordFile,
	} {
		if p == "" {
			continue
		}
		if fi, err := os.Stat(p); err == nil && fi.Mode().Perm()&0o077 != 0 {
			log.Warn("a secret file is readable or writable by other users; chmod 600 it", "key", key, "file", p, "mode", fi.Mode().Perm().String())
		}
	}
}

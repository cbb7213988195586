package restore

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pgkeep/pgkeep/repo"
)

// quoteConf quotes a value for postgresql.conf. PostgreSQL's config lexer
// (guc-file.l) reads a quoted string as
//
//	'([^'\\\n]|\\.|'')*'
//
// and then takes \b \f \n \r \t, octal and backslash-anything escapes, so
// a backslash, a quote and a line break must be escaped or the line means
// something else, or nothing.
func quoteConf(v string) string {
	return "'" + confQuoter.Replace(v) + "'"
}

var confQuoter = strings.NewReplacer(`\`, `\\`, "'", "''", "\n", `\n`, "\r", `\r`)

// recoveryConfLines are the postgresql.auto.conf lines for a restore.
func recoveryConfLines(restoreCommand string, t Target) []string {
	var lines []string
	if restoreCommand != "" {
		lines = append(lines, "restore_command = "+quoteConf(restoreCommand))
	}
	for _, kv := range t.Settings() {
		lines = append(lines, kv[0]+" = "+quoteConf(kv[1]))
	}
	return lines
}

// writeRecoveryFiles writes backup_label, tablespace_map, the recovery
// settings and the signal file.
func writeRecoveryFiles(o BackupOptions, m *repo.Manifest, tbl map[string]string) error {
	if err := writeFileSync(filepath.Join(o.PGData, "backup_label"), []byte(m.BackupLabel), 0o600); err != nil {
		return err
	}
	os.Remove(filepath.Join(o.PGData, "tablespace_map"))
	if len(m.Tablespaces) > 0 {
		// PostgreSQL recreates the symlinks from this file: give it the
		// (possibly relocated) directories restore used.
		var b strings.Builder
		for _, t := range m.Tablespaces {
			fmt.Fprintf(&b, "%s %s\n", t.OID, tbl["pg_tblspc/"+t.OID])
		}
		if err := writeFileSync(filepath.Join(o.PGData, "tablespace_map"), []byte(b.String()), 0o600); err != nil {
			return err
		}
	}
	if o.NoRecoveryConfig {
		os.Remove(filepath.Join(o.PGData, "recovery.signal"))
		os.Remove(filepath.Join(o.PGData, "standby.signal"))
		return nil
	}
	autoConf := filepath.Join(o.PGData, "postgresql.auto.conf")
	old, _ := os.ReadFile(autoConf)
	var kept []string
	userRetry := false
	for _, line := range strings.Split(string(old), "\n") {
		key := strings.TrimSpace(line)
		if strings.HasPrefix(key, "restore_command") || strings.HasPrefix(key, "recovery_target") || strings.HasPrefix(key, "# pgkeep restore") ||
			(o.ArchiveModeOff && strings.HasPrefix(key, "archive_mode")) {
			continue
		}
		if strings.HasPrefix(key, "wal_retrieve_retry_interval") {
			userRetry = true
		}
		kept = append(kept, line)
	}
	conf := strings.TrimRight(strings.Join(kept, "\n"), "\n") + "\n"
	conf += fmt.Sprintf("# pgkeep restore of backup %s at %s\n", m.ID, time.Now().UTC().Format(time.RFC3339))
	for _, l := range recoveryConfLines(o.RestoreCommand, o.Target) {
		conf += l + "\n"
	}
	if o.ArchiveModeOff {
		// postgresql.auto.conf is read after postgresql.conf: this wins.
		conf += "archive_mode = 'off'\n"
	}
	if o.Standby && o.RetryInterval > 0 && !userRetry {
		conf += fmt.Sprintf("wal_retrieve_retry_interval = '%dms'\n", o.RetryInterval.Milliseconds())
	}
	if err := writeFileSync(autoConf, []byte(conf), 0o600); err != nil {
		return err
	}
	signal, other := "recovery.signal", "standby.signal"
	if o.Standby {
		signal, other = other, signal
	}
	os.Remove(filepath.Join(o.PGData, other))
	return writeFileSync(filepath.Join(o.PGData, signal), nil, 0o600)
}

func writeFileSync(p string, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

package pg

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// ControlFileName is pg_control's path relative to the data directory.
const ControlFileName = "global/pg_control"

// SystemIdentifier reads the database system identifier from the data
// directory's pg_control. It is the first field of ControlFileData (a
// uint64 in the machine's byte order; pgkeep only supports little-endian
// hosts, as PostgreSQL binaries on them write it).
func SystemIdentifier(pgdata string) (uint64, error) {
	f, err := os.Open(filepath.Join(pgdata, ControlFileName))
	if err != nil {
		return 0, fmt.Errorf("read system identifier: %w", err)
	}
	defer f.Close()
	var buf [8]byte
	if _, err := io.ReadFull(f, buf[:]); err != nil {
		return 0, fmt.Errorf("read system identifier from %s: %w", f.Name(), err)
	}
	return binary.LittleEndian.Uint64(buf[:]), nil
}

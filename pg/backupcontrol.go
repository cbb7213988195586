package pg

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// ServerInfo is what a backup needs to know about the server it copies.
type ServerInfo struct {
	Version     int // server_version_num
	Standby     bool
	Checksums   bool
	SystemID    uint64
	DataDir     string
	SegmentSize int64
}

// QueryServer reads the server facts a backup depends on and refuses a
// version pgkeep does not support.
func QueryServer(ctx context.Context, conn *pgx.Conn) (ServerInfo, error) {
	var si ServerInfo
	var checksums, seg string
	err := conn.QueryRow(ctx, `SELECT current_setting('server_version_num')::int, pg_is_in_recovery(),
		current_setting('data_checksums'), (SELECT system_identifier FROM pg_control_system()),
		current_setting('data_directory'), (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size')`).
		Scan(&si.Version, &si.Standby, &checksums, &si.SystemID, &si.DataDir, &seg)
	if err != nil {
		return si, fmt.Errorf("query server (needs a superuser or pg_read_all_settings + backup privileges): %w", err)
	}
	si.Checksums = checksums == "on"
	si.SegmentSize, err = strconv.ParseInt(seg, 10, 64)
	if err != nil || !ValidSegmentSize(si.SegmentSize) {
		return si, fmt.Errorf("unexpected wal_segment_size %q", seg)
	}
	if si.Version < 130000 {
		return si, fmt.Errorf("PostgreSQL %d is not supported (13 or newer)", si.Version/10000)
	}
	return si, nil
}

// StartBackup starts a non-exclusive base backup on conn (pg_backup_start,
// pg_start_backup before 15) and returns its start LSN. The backup lasts
// as long as the connection: closing it aborts the backup.
func StartBackup(ctx context.Context, conn *pgx.Conn, version int, label string, fastCheckpoint bool) (LSN, error) {
	var text string
	var err error
	if version >= 150000 {
		err = conn.QueryRow(ctx, "SELECT pg_backup_start($1, $2)::text", label, fastCheckpoint).Scan(&text)
	} else {
		err = conn.QueryRow(ctx, "SELECT pg_start_backup($1, $2, false)::text", label, fastCheckpoint).Scan(&text)
	}
	if err != nil {
		return 0, err
	}
	return ParseLSN(text)
}

// BackupStop is what pg_backup_stop returns.
type BackupStop struct {
	LSN           LSN
	Label         string // backup_label's content
	TablespaceMap string // tablespace_map's content ("" without tablespaces)
}

// StopBackup ends the non-exclusive backup started on conn (pg_backup_stop,
// pg_stop_backup before 15), not waiting for the WAL to be archived:
// pgkeep checks the repository itself.
func StopBackup(ctx context.Context, conn *pgx.Conn, version int) (BackupStop, error) {
	var st BackupStop
	var text string
	var err error
	if version >= 150000 {
		err = conn.QueryRow(ctx, "SELECT lsn::text, labelfile, coalesce(spcmapfile, '') FROM pg_backup_stop(false)").Scan(&text, &st.Label, &st.TablespaceMap)
	} else {
		err = conn.QueryRow(ctx, "SELECT lsn::text, labelfile, coalesce(spcmapfile, '') FROM pg_stop_backup(false, false)").Scan(&text, &st.Label, &st.TablespaceMap)
	}
	if err != nil {
		return st, err
	}
	st.LSN, err = ParseLSN(text)
	return st, err
}

var labelTLIRE = regexp.MustCompile(`(?m)^START TIMELINE: ([0-9]+)$`)

// LabelTimeline reads the START TIMELINE line of a backup_label.
func LabelTimeline(label string) (uint32, error) {
	mm := labelTLIRE.FindStringSubmatch(label)
	if mm == nil {
		return 0, errors.New("backup_label has no START TIMELINE")
	}
	n, err := strconv.ParseUint(mm[1], 10, 32)
	return uint32(n), err
}

// ArchiverState is what pg_stat_archiver says about the server's own
// archiving: whether its latest attempt failed, and on which file.
type ArchiverState struct {
	Failing    bool // the last failure is newer than the last success
	FailedWAL  string
	FailedAt   time.Time
	FailedRuns int64
}

// QueryArchiver reads pg_stat_archiver (through QueryArchiverStatus: one
// query of the archiver for every caller).
func QueryArchiver(ctx context.Context, conn *pgx.Conn) (ArchiverState, error) {
	s, err := QueryArchiverStatus(ctx, conn)
	if err != nil {
		return ArchiverState{}, err
	}
	return s.State(), nil
}

// ArchiveSettings returns archive_mode and archive_command.
func ArchiveSettings(ctx context.Context, conn *pgx.Conn) (mode, command string, err error) {
	err = conn.QueryRow(ctx, "SELECT current_setting('archive_mode'), current_setting('archive_command')").Scan(&mode, &command)
	return mode, command, err
}

// SwitchWALWithRestorePoint creates a restore point, so the current
// segment holds WAL and the switch happens even on an idle server, then
// switches WAL; it returns the name of the segment the switch completed,
// on the current timeline.
func SwitchWALWithRestorePoint(ctx context.Context, conn *pgx.Conn, name string) (string, error) {
	var seg string
	err := conn.QueryRow(ctx, "SELECT pg_walfile_name(pg_switch_wal()) FROM (SELECT pg_create_restore_point($1)) rp", name).Scan(&seg)
	return seg, err
}

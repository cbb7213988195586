package pg

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// ArchiverStatus is PostgreSQL's archiver as pg_stat_archiver shows it,
// with the server's role and archive_mode. Times are UTC.
type ArchiverStatus struct {
	InRecovery       bool       `json:"in_recovery"`
	ArchiveMode      string     `json:"archive_mode,omitempty"`
	ArchivedCount    int64      `json:"archived_count"`
	LastArchivedWAL  string     `json:"last_archived_wal,omitempty"`
	LastArchivedTime *time.Time `json:"last_archived_time,omitempty"`
	FailedCount      int64      `json:"failed_count"`
	LastFailedWAL    string     `json:"last_failed_wal,omitempty"`
	LastFailedTime   *time.Time `json:"last_failed_time,omitempty"`
	StatsReset       *time.Time `json:"stats_reset,omitempty"`
}

// QueryArchiverStatus reads pg_stat_archiver on conn.
func QueryArchiverStatus(ctx context.Context, conn *pgx.Conn) (ArchiverStatus, error) {
	var ar ArchiverStatus
	var lastWAL, failedWAL *string
	err := conn.QueryRow(ctx, `SELECT pg_is_in_recovery(), current_setting('archive_mode'),
		archived_count, last_archived_wal, last_archived_time,
		failed_count, last_failed_wal, last_failed_time, stats_reset
		FROM pg_stat_archiver`).Scan(&ar.InRecovery, &ar.ArchiveMode,
		&ar.ArchivedCount, &lastWAL, &ar.LastArchivedTime,
		&ar.FailedCount, &failedWAL, &ar.LastFailedTime, &ar.StatsReset)
	if err != nil {
		return ArchiverStatus{}, err
	}
	if lastWAL != nil {
		ar.LastArchivedWAL = *lastWAL
	}
	if failedWAL != nil {
		ar.LastFailedWAL = *failedWAL
	}
	for _, t := range []*time.Time{ar.LastArchivedTime, ar.LastFailedTime, ar.StatsReset} {
		if t != nil {
			*t = t.UTC()
		}
	}
	return ar, nil
}

// State is what s says about the server's own archiving: failing when
// the last failure is newer than the last success.
func (s ArchiverStatus) State() ArchiverState {
	st := ArchiverState{FailedWAL: s.LastFailedWAL, FailedRuns: s.FailedCount}
	if s.LastFailedTime != nil {
		st.FailedAt = *s.LastFailedTime
		st.Failing = s.LastArchivedTime == nil || s.LastFailedTime.After(*s.LastArchivedTime)
	}
	return st
}

// ReplayStatus is a recovering server's replay position.
type ReplayStatus struct {
	InRecovery bool   // pg_is_in_recovery()
	LSN        string // pg_last_wal_replay_lsn(), "" when none
	// PauseState is pg_get_wal_replay_pause_state(), "" once promoted.
	PauseState  string
	SegmentSize int64 // wal_segment_size
}

// QueryReplayStatus reads the replay position on conn.
func QueryReplayStatus(ctx context.Context, conn *pgx.Conn) (ReplayStatus, error) {
	var s ReplayStatus
	err := conn.QueryRow(ctx, `SELECT pg_is_in_recovery(),
		coalesce(pg_last_wal_replay_lsn()::text, ''),
		CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE '' END,
		(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')`).Scan(&s.InRecovery, &s.LSN, &s.PauseState, &s.SegmentSize)
	return s, err
}

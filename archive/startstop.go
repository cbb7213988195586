package archive

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
)

// connectServer connects to the server, learns what pgkeep needs to know
// about it, and makes sure the repository belongs to it.
func connectServer(ctx context.Context, dsn string, r *repo.Repository) (*pgx.Conn, pg.ServerInfo, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, pg.ServerInfo{}, fmt.Errorf("connect: %w", err)
	}
	si, err := pg.QueryServer(ctx, conn)
	if err == nil {
		err = r.BindSystem(ctx, si.SystemID)
	}
	if err != nil {
		conn.Close(context.Background())
		return nil, si, err
	}
	return conn, si, nil
}

// startBackup starts the non-exclusive backup id on conn.
func startBackup(ctx context.Context, conn *pgx.Conn, si pg.ServerInfo, id string, fastCheckpoint bool) (pg.LSN, error) {
	lsn, err := pg.StartBackup(ctx, conn, si.Version, "pgkeep "+id, fastCheckpoint)
	if err != nil {
		return 0, fmt.Errorf("start: %w", err)
	}
	return lsn, nil
}

// stopBackup ends the backup and records in m where it stops: stop LSN and
// time, timeline, backup_label, tablespace_map and the WAL range that
// makes it consistent.
func stopBackup(ctx context.Context, conn *pgx.Conn, si pg.ServerInfo, m *repo.Manifest, startLSN pg.LSN) error {
	st, err := pg.StopBackup(ctx, conn, si.Version)
	if err != nil {
		return fmt.Errorf("stop (was PostgreSQL stopped or the standby promoted during the backup?): %w", err)
	}
	tli, err := pg.LabelTimeline(st.Label)
	if err != nil {
		return err
	}
	m.StopTime = time.Now().UTC()
	m.StopLSN = st.LSN.String()
	m.Timeline = tli
	m.BackupLabel = st.Label
	m.TablespaceMap = st.TablespaceMap
	m.StartWAL = startLSN.Segment(tli, si.SegmentSize).Name
	m.StopWAL = (st.LSN - 1).Segment(tli, si.SegmentSize).Name
	return nil
}

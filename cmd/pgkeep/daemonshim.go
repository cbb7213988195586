package main

import (
	"context"
	"log/slog"

	"github.com/pgkeep/pgkeep/maintain"
	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/status"
)

// What daemoncmd.go still calls by its old names, until the daemon moves
// into its own package (helper "daemon"): there it calls
// status.LocalPostgres and maintain.OpenVerifyCache directly, and this
// file goes.

type archiverReport = pg.ArchiverStatus

type postgresReport struct{ *archiverReport }

func postgresStatus(ctx context.Context, cfg Config) *postgresReport {
	return &postgresReport{status.LocalPostgres(ctx, cfg.Postgres.DSN).ArchiverStatus}
}

func openVerifyCache(cfg Config, log *slog.Logger, r *repo.Repository) *repo.VerifyCache {
	return maintain.OpenVerifyCache(cfg.Verify.CacheDir, log, r)
}

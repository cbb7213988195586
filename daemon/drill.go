package daemon

import (
	"context"
	"time"

	"github.com/pgkeep/pgkeep/drill"
	"github.com/pgkeep/pgkeep/scheduler"
)

// drill rehearses a restore of the newest backup (docs/drill.md): the
// run record carries the backup, its database size and the
// restore-to-query time, which the drill metrics are made from.
func (d *runner) drill(ctx context.Context, job Job, _ time.Time) (scheduler.Result, error) {
	o := job.Drill
	if o.Logger == nil {
		o.Logger = d.log
	}
	o.Logger = o.Logger.With("job", job.Name)
	res, err := drill.Run(ctx, d.r, o)
	if err != nil {
		return scheduler.Result{BackupID: res.BackupID}, err
	}
	return scheduler.Result{BackupID: res.BackupID, Bytes: res.DataSize, QuerySeconds: res.RestoreToQuery.Seconds()}, nil
}

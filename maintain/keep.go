package maintain

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/pgkeep/pgkeep/repo"
)

// Keep marks backup id kept, until until (nil: until unkept), and says so.
func Keep(ctx context.Context, r *repo.Repository, id string, until *time.Time, out io.Writer) error {
	if err := r.KeepBackup(ctx, id, until, time.Now()); err != nil {
		return err
	}
	if until != nil {
		fmt.Fprintf(out, "backup %s is kept until %s\n", id, until.UTC().Format(time.RFC3339))
	} else {
		fmt.Fprintf(out, "backup %s is kept until unkept\n", id)
	}
	return nil
}

// Unkeep lets retention remove backup id again, and says so.
func Unkeep(ctx context.Context, r *repo.Repository, id string, out io.Writer) error {
	if err := r.UnkeepBackup(ctx, id); err != nil {
		return err
	}
	fmt.Fprintf(out, "backup %s is no longer kept\n", id)
	return nil
}

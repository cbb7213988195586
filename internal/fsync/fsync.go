// Package fsync makes directory entries durable, for the local repository
// and for restored data directories alike.
package fsync

import (
	"errors"
	"os"
	"syscall"
)

// Dir fsyncs a directory so the entries created, renamed or removed in it
// survive a crash. EINVAL means the file system cannot sync directories;
// nothing to do then.
func Dir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}

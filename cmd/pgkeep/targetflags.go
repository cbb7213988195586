package main

import (
	"fmt"

	"github.com/spf13/pflag"

	"github.com/pgkeep/pgkeep/restore"
)

// targetFlags are the --target-* flags of restore and drill, parsed into
// one restore.Target.
type targetFlags struct {
	spec   restore.TargetSpec
	target string
}

// addTargetFlags registers the recovery-target flags; withEnd adds the
// ones only a restore that stays the user's has (--target-action: a drill
// always promotes; --target-exclusive).
func addTargetFlags(f *pflag.FlagSet, withEnd bool) *targetFlags {
	t := &targetFlags{}
	f.StringVar(&t.spec.Time, "target-time", "", "recover to this time (RFC 3339 or PostgreSQL timestamptz, with zone)")
	f.StringVar(&t.spec.LSN, "target-lsn", "", "recover to this WAL location")
	f.StringVar(&t.spec.XID, "target-xid", "", "recover to this transaction ID")
	f.StringVar(&t.spec.Name, "target-name", "", "recover to this named restore point (pg_create_restore_point)")
	f.StringVar(&t.target, "target", "", "immediate: stop as soon as the backup is consistent")
	if withEnd {
		f.StringVar(&t.spec.Action, "target-action", "", "at the target: promote, pause or shutdown (PostgreSQL's default: pause)")
	}
	f.StringVar(&t.spec.Timeline, "target-timeline", "", "latest (default), current or a timeline number")
	if withEnd {
		f.BoolVar(&t.spec.Exclusive, "target-exclusive", false, "stop just before the target instead of just after it")
	}
	return t
}

// parse returns the target the flags name; a bad one is a configError.
func (t *targetFlags) parse() (restore.Target, error) {
	spec := t.spec
	switch t.target {
	case "":
	case "immediate":
		spec.Immediate = true
	default:
		return restore.Target{}, &configError{fmt.Sprintf("--target %q: only immediate is supported (use --target-time, --target-lsn, --target-xid or --target-name)", t.target)}
	}
	r, err := restore.ParseTarget(spec)
	if err != nil {
		return restore.Target{}, &configError{err.Error()}
	}
	return r, nil
}

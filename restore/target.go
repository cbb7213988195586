package restore

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pgkeep/pgkeep/pg"
)

// Target is where recovery stops; the zero value replays all archived WAL.
type Target struct {
	Time      string // recovery_target_time
	LSN       string // recovery_target_lsn
	XID       string // recovery_target_xid
	Name      string // recovery_target_name (pg_create_restore_point)
	Immediate bool   // recovery_target = 'immediate': stop once consistent
	Action    string // recovery_target_action: promote, pause or shutdown
	Timeline  string // recovery_target_timeline: latest, current or a number
	Exclusive bool   // recovery_target_inclusive = off

	time time.Time
	lsn  pg.LSN
}

var timeLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999Z07",
	"2006-01-02 15:04:05.999999999 Z07:00",
	"2006-01-02 15:04:05.999999999 MST",
	"2006-01-02T15:04:05.999999999Z07",
}

// ParseTargetTime accepts RFC 3339 and PostgreSQL's timestamptz output. A
// zone is required: the restore host's and the server's may differ, and
// guessing wrong restores to the wrong moment.
func ParseTargetTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	for _, l := range timeLayouts {
		if t, err := time.Parse(l, s); err == nil {
			if l == "2006-01-02 15:04:05.999999999 MST" && t.Location() != time.UTC && !strings.HasSuffix(s, "UTC") && !strings.HasSuffix(s, "GMT") {
				continue
			}
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("target time %q: use RFC 3339 with a zone, e.g. 2026-11-22T18:04:05Z or '2026-11-22 18:04:05.123+01'", s)
}

// Validate checks the combination and parses what pgkeep itself uses.
func (t *Target) Validate() error {
	n := 0
	for _, set := range []bool{t.Time != "", t.LSN != "", t.XID != "", t.Name != "", t.Immediate} {
		if set {
			n++
		}
	}
	if n > 1 {
		return errors.New("give at most one of --target-time, --target-lsn, --target-xid, --target-name, --target immediate")
	}
	if t.Time != "" {
		tt, err := ParseTargetTime(t.Time)
		if err != nil {
			return err
		}
		if y := tt.UTC().Year(); y < 1 || y > 9999 {
			return fmt.Errorf("target time %q: year %d (UTC) is outside what PostgreSQL accepts", t.Time, y)
		}
		t.time = tt
	}
	if t.LSN != "" {
		l, err := pg.ParseLSN(t.LSN)
		if err != nil {
			return fmt.Errorf("--target-lsn: %w", err)
		}
		t.lsn = l
	}
	if t.Name != "" {
		// PostgreSQL refuses longer names (MAXFNAMELEN) and cannot read a NUL.
		if len(t.Name) >= 64 || strings.ContainsRune(t.Name, 0) {
			return fmt.Errorf("--target-name: a restore point name has at most 63 bytes and no NUL (got %d bytes)", len(t.Name))
		}
	}
	if t.XID != "" {
		if _, err := strconv.ParseUint(t.XID, 10, 64); err != nil {
			return fmt.Errorf("--target-xid %q is not a transaction ID", t.XID)
		}
	}
	switch t.Action {
	case "", "promote", "pause", "shutdown":
	default:
		return fmt.Errorf("--target-action %q: use promote, pause or shutdown", t.Action)
	}
	if t.Action != "" && n == 0 {
		return errors.New("--target-action needs a recovery target")
	}
	switch t.Timeline {
	case "", "latest", "current":
	default:
		if v, err := strconv.ParseUint(t.Timeline, 10, 32); err != nil || v == 0 {
			return fmt.Errorf("--target-timeline %q: use latest, current or a timeline number", t.Timeline)
		}
	}
	return nil
}

// Settings are the recovery parameters for postgresql.auto.conf.
func (t *Target) Settings() [][2]string {
	var s [][2]string
	switch {
	case t.Time != "":
		s = append(s, [2]string{"recovery_target_time", t.time.UTC().Format("2006-01-02 15:04:05.999999-07:00")})
	case t.LSN != "":
		s = append(s, [2]string{"recovery_target_lsn", t.lsn.String()})
	case t.XID != "":
		s = append(s, [2]string{"recovery_target_xid", t.XID})
	case t.Name != "":
		s = append(s, [2]string{"recovery_target_name", t.Name})
	case t.Immediate:
		s = append(s, [2]string{"recovery_target", "immediate"})
	}
	if len(s) > 0 && t.Exclusive {
		s = append(s, [2]string{"recovery_target_inclusive", "off"})
	}
	if t.Action != "" {
		s = append(s, [2]string{"recovery_target_action", t.Action})
	}
	tl := t.Timeline
	if tl == "" {
		tl = "latest"
	}
	return append(s, [2]string{"recovery_target_timeline", tl})
}

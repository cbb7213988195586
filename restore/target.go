package restore

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pgkeep/pgkeep/pg"
)

// TargetSpec is a recovery target as the user gives it (command-line
// flags, Patroni's bootstrap arguments): text, checked by ParseTarget.
type TargetSpec struct {
	Time      string // recovery_target_time
	LSN       string // recovery_target_lsn
	XID       string // recovery_target_xid
	Name      string // recovery_target_name (pg_create_restore_point)
	Immediate bool   // recovery_target = 'immediate': stop once consistent
	Action    string // recovery_target_action: promote, pause or shutdown
	Timeline  string // recovery_target_timeline: latest, current or a number
	Exclusive bool   // recovery_target_inclusive = off
}

// TargetKind says where recovery stops.
type TargetKind int

const (
	// TargetLatest replays all archived WAL (no recovery_target_*).
	TargetLatest TargetKind = iota
	// TargetImmediate stops as soon as the backup is consistent.
	TargetImmediate
	// TargetTime stops at a moment (recovery_target_time).
	TargetTime
	// TargetLSN stops at a WAL location (recovery_target_lsn).
	TargetLSN
	// TargetXID stops at a transaction's commit (recovery_target_xid).
	TargetXID
	// TargetName stops at a named restore point (recovery_target_name).
	TargetName
)

func (k TargetKind) String() string {
	switch k {
	case TargetLatest:
		return "latest"
	case TargetImmediate:
		return "immediate"
	case TargetTime:
		return "time"
	case TargetLSN:
		return "lsn"
	case TargetXID:
		return "xid"
	case TargetName:
		return "name"
	}
	return fmt.Sprintf("TargetKind(%d)", int(k))
}

// TargetAction is recovery_target_action: what PostgreSQL does at the
// target.
type TargetAction string

const (
	ActionDefault  TargetAction = ""         // PostgreSQL's default, pause
	ActionPromote  TargetAction = "promote"  // end recovery and accept writes
	ActionPause    TargetAction = "pause"    // pause replay (hot standby reads)
	ActionShutdown TargetAction = "shutdown" // stop the server
)

// TimelineKind is how recovery_target_timeline names the timeline.
type TimelineKind int

const (
	// TimelineLatest follows the newest archived timeline (the default).
	TimelineLatest TimelineKind = iota
	// TimelineCurrent stays on the backup's own timeline.
	TimelineCurrent
	// TimelineID follows the timeline with a given number.
	TimelineID
)

// TargetTimeline is the timeline recovery follows.
type TargetTimeline struct {
	Kind TimelineKind
	ID   uint32 // with TimelineID
}

// String is the value of recovery_target_timeline.
func (tl TargetTimeline) String() string {
	switch tl.Kind {
	case TimelineCurrent:
		return "current"
	case TimelineID:
		return strconv.FormatUint(uint64(tl.ID), 10)
	}
	return "latest"
}

// Target is a parsed recovery target (ParseTarget); the zero value replays
// all archived WAL on the latest timeline. Only the field of its Kind is
// set.
type Target struct {
	Kind TargetKind
	Time time.Time // TargetTime
	LSN  pg.LSN    // TargetLSN
	// XID is the transaction ID as given (TargetXID): PostgreSQL reads it
	// itself, in its own notation.
	XID       string
	Name      string // TargetName
	Action    TargetAction
	Timeline  TargetTimeline
	Exclusive bool // recovery_target_inclusive = off
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

// ParseTarget checks a target's combination and values, and returns it
// parsed.
func ParseTarget(s TargetSpec) (Target, error) {
	var t Target
	n := 0
	for _, set := range []bool{s.Time != "", s.LSN != "", s.XID != "", s.Name != "", s.Immediate} {
		if set {
			n++
		}
	}
	if n > 1 {
		return Target{}, errors.New("give at most one of --target-time, --target-lsn, --target-xid, --target-name, --target immediate")
	}
	switch {
	case s.Time != "":
		tt, err := ParseTargetTime(s.Time)
		if err != nil {
			return Target{}, err
		}
		if y := tt.UTC().Year(); y < 1 || y > 9999 {
			return Target{}, fmt.Errorf("target time %q: year %d (UTC) is outside what PostgreSQL accepts", s.Time, y)
		}
		t.Kind, t.Time = TargetTime, tt
	case s.LSN != "":
		l, err := pg.ParseLSN(s.LSN)
		if err != nil {
			return Target{}, fmt.Errorf("--target-lsn: %w", err)
		}
		t.Kind, t.LSN = TargetLSN, l
	case s.Name != "":
		// PostgreSQL refuses longer names (MAXFNAMELEN) and cannot read a NUL.
		if len(s.Name) >= 64 || strings.ContainsRune(s.Name, 0) {
			return Target{}, fmt.Errorf("--target-name: a restore point name has at most 63 bytes and no NUL (got %d bytes)", len(s.Name))
		}
		t.Kind, t.Name = TargetName, s.Name
	case s.XID != "":
		if _, err := strconv.ParseUint(s.XID, 10, 64); err != nil {
			return Target{}, fmt.Errorf("--target-xid %q is not a transaction ID", s.XID)
		}
		t.Kind, t.XID = TargetXID, s.XID
	case s.Immediate:
		t.Kind = TargetImmediate
	}
	switch a := TargetAction(s.Action); a {
	case ActionDefault, ActionPromote, ActionPause, ActionShutdown:
		t.Action = a
	default:
		return Target{}, fmt.Errorf("--target-action %q: use promote, pause or shutdown", s.Action)
	}
	if t.Action != ActionDefault && n == 0 {
		return Target{}, errors.New("--target-action needs a recovery target")
	}
	tl, err := parseTimeline(s.Timeline)
	if err != nil {
		return Target{}, err
	}
	t.Timeline = tl
	t.Exclusive = s.Exclusive
	return t, nil
}

// parseTimeline reads recovery_target_timeline. A number is taken the way
// PostgreSQL reads it (strtoul with base 0: 010 is 8); pgkeep accepts only
// decimal digits.
func parseTimeline(s string) (TargetTimeline, error) {
	switch s {
	case "", "latest":
		return TargetTimeline{Kind: TimelineLatest}, nil
	case "current":
		return TargetTimeline{Kind: TimelineCurrent}, nil
	}
	bad := fmt.Errorf("--target-timeline %q: use latest, current or a timeline number", s)
	if v, err := strconv.ParseUint(s, 10, 32); err != nil || v == 0 {
		return TargetTimeline{}, bad
	}
	v, err := strconv.ParseUint(s, 0, 32)
	if err != nil || v == 0 {
		return TargetTimeline{}, bad
	}
	return TargetTimeline{Kind: TimelineID, ID: uint32(v)}, nil
}

// Settings are the recovery parameters for postgresql.auto.conf.
func (t Target) Settings() [][2]string {
	var s [][2]string
	switch t.Kind {
	case TargetTime:
		s = append(s, [2]string{"recovery_target_time", t.Time.UTC().Format("2006-01-02 15:04:05.999999-07:00")})
	case TargetLSN:
		s = append(s, [2]string{"recovery_target_lsn", t.LSN.String()})
	case TargetXID:
		s = append(s, [2]string{"recovery_target_xid", t.XID})
	case TargetName:
		s = append(s, [2]string{"recovery_target_name", t.Name})
	case TargetImmediate:
		s = append(s, [2]string{"recovery_target", "immediate"})
	}
	if len(s) > 0 && t.Exclusive {
		s = append(s, [2]string{"recovery_target_inclusive", "off"})
	}
	if t.Action != ActionDefault {
		s = append(s, [2]string{"recovery_target_action", string(t.Action)})
	}
	return append(s, [2]string{"recovery_target_timeline", t.Timeline.String()})
}

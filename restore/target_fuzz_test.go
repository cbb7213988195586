package restore

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

// confLineRE is a postgresql.conf line as PostgreSQL's lexer (guc-file.l)
// reads a quoted value:
//
//	key = '([^'\\\n]|\\.|'')*'
var confLineRE = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_.]*) = '((?:[^'\\\n]|\\.|'')*)'$`)

// pgUnquote is GUC_scanstr: two quotes are one, and \b \f \n \r \t, \ooo
// (octal) and backslash-anything are escapes.
func pgUnquote(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\'' && i+1 < len(s) && s[i+1] == '\'':
			b.WriteByte('\'')
			i++
		case c == '\\' && i+1 < len(s):
			i++
			switch d := s[i]; d {
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			case '0', '1', '2', '3', '4', '5', '6', '7':
				v := int(d - '0')
				for k := 0; k < 2 && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '7'; k++ {
					i++
					v = v*8 + int(s[i]-'0')
				}
				b.WriteByte(byte(v))
			default:
				b.WriteByte(d)
			}
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// FuzzRecoveryTarget: a target ParseTarget accepts renders into
// postgresql.auto.conf lines PostgreSQL reads back as exactly the value
// (one line each, quotes and backslashes escaped), within PostgreSQL's own
// limits (restore point names < 64 bytes, years 1..9999).
func FuzzRecoveryTarget(f *testing.F) {
	for _, s := range []struct {
		kind  uint8
		value string
	}{
		{0, "2026-11-22T18:04:05Z"}, {0, "2026-11-22 18:04:05.123+01"}, {0, "2026-11-22 18:04:05 UTC"},
		{0, "0001-01-01T00:30:00+01:00"}, {1, "0/3000028"}, {1, "16/B374D848"}, {2, "771"},
		{3, "before-upgrade"}, {3, "it's\nhere\\"}, {3, strings.Repeat("n", 64)}, {4, "latest"}, {4, "3"},
		{5, "promote"}, {5, "pause"},
	} {
		f.Add(s.kind, s.value, false, "/usr/bin/pgkeep wal-fetch %f %p")
	}
	f.Fuzz(func(t *testing.T, kind uint8, value string, exclusive bool, restoreCommand string) {
		var tg TargetSpec
		switch kind % 6 {
		case 0:
			tg.Time = value
		case 1:
			tg.LSN = value
		case 2:
			tg.XID = value
		case 3:
			tg.Name = value
		case 4:
			tg.Timeline, tg.Immediate = value, true
		case 5:
			tg.Action, tg.Immediate = value, true
		}
		tg.Exclusive = exclusive
		parsed, err := ParseTarget(tg)
		if err != nil {
			return
		}
		if len(parsed.Name) >= 64 {
			t.Fatalf("restore point name of %d bytes accepted; PostgreSQL refuses it", len(tg.Name))
		}
		want := map[string]string{"restore_command": restoreCommand}
		for _, kv := range parsed.Settings() {
			want[kv[0]] = kv[1]
			if kv[0] == "recovery_target_time" {
				tt, err := time.Parse("2006-01-02 15:04:05.999999-07:00", kv[1])
				if err != nil || tt.Year() < 1 || tt.Year() > 9999 {
					t.Fatalf("recovery_target_time %q: %v", kv[1], err)
				}
			}
		}
		if strings.ContainsRune(restoreCommand, 0) {
			restoreCommand = ""
			delete(want, "restore_command")
		}
		for _, line := range recoveryConfLines(restoreCommand, parsed) {
			m := confLineRE.FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("PostgreSQL cannot read %q", line)
			}
			if got := pgUnquote(m[2]); got != want[m[1]] {
				t.Fatalf("%s reads back as %q, want %q", m[1], got, want[m[1]])
			}
		}
	})
}

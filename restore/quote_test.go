package restore

import "testing"

func TestQuoteConf(t *testing.T) {
	for in, want := range map[string]string{
		`pgkeep wal-fetch %f %p`:             `'pgkeep wal-fetch %f %p'`,
		`pgkeep --config '/a b/it'\''s.yml'`: `'pgkeep --config ''/a b/it''\\''''s.yml'''`,
		`C:\x`:                               `'C:\\x'`,
	} {
		if got := quoteConf(in); got != want {
			t.Errorf("quoteConf(%q) = %q, want %q", in, got, want)
		}
	}
}

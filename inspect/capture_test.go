package inspect

import (
	"strings"
	"testing"

	"github.com/pgkeep/pgkeep/repo"
)

// backup show's change capture line: map mode with its range, hash mode
// with the fallback's reason, a checksum backup's audit.
func TestCaptureLine(t *testing.T) {
	for _, c := range []struct {
		c    repo.ChangeCapture
		want string
	}{
		{repo.ChangeCapture{Mode: "map", MapFrom: "0/7000028", MapTo: "0/9000028", MappedPages: 525, SampledPages: 2214},
			"map (WAL block maps 0/7000028..0/9000028; 525 mapped pages, 2214 sampled unread pages checked)"},
		{repo.ChangeCapture{Mode: "hash", Fallback: "segment 000000010000000000000011 has no block map"},
			"hash (map mode not used: segment 000000010000000000000011 has no block map)"},
		{repo.ChangeCapture{Mode: "hash", Audit: "ok"}, "hash; block map audit: ok"},
		{repo.ChangeCapture{Mode: "hash", Audit: "misses", AuditMisses: 2, AuditExamples: []string{"base/5/16419 block 2 (LSN 0/11000100)", "base/5/16419 block 4 (LSN 0/11000200)"}},
			"hash; block map audit: 2 changed pages the maps missed, e.g. base/5/16419 block 2 (LSN 0/11000100); base/5/16419 block 4"},
	} {
		if got := captureLine(&c.c); !strings.HasPrefix(got, c.want) {
			t.Errorf("captureLine(%+v) = %q, want %q", c.c, got, c.want)
		}
	}
}

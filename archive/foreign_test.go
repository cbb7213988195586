package archive

import (
	"testing"

	"github.com/pgkeep/pgkeep/repo"
)

func TestForeignTable(t *testing.T) {
	var ft foreignTable
	if ft.of("") != 0 || ft.name(0) != "" {
		t.Fatal("the empty name is not 0")
	}
	refPacks := []repo.Pack{{Name: "backups/a/pack/000000"}, {Name: "backups/a/pack/000001"}}
	b := ft.ofRef(refPacks, 1)
	a := ft.of("backups/x/pack/000007") // an interrupted backup's
	if b == 0 || a == 0 || a == b {
		t.Fatalf("distinct packs share or lack an index: %d %d", a, b)
	}
	if ft.of("backups/a/pack/000001") != b || ft.ofRef(refPacks, 1) != b {
		t.Error("the same pack got a second index")
	}
	if c := ft.ofRef(refPacks, 0); c == a || c == b || ft.name(c) != "backups/a/pack/000000" {
		t.Errorf("reference pack 0: index %d, name %q", c, ft.name(c))
	}
	if ft.name(b) != "backups/a/pack/000001" || ft.name(a) != "backups/x/pack/000007" {
		t.Errorf("names: %q %q", ft.name(b), ft.name(a))
	}
}

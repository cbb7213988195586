package archive

import "github.com/pgkeep/pgkeep/repo"

// foreignPack is the pack of a block this backup lists but did not store
// (the reference's, or an interrupted backup's): an index into a
// foreignTable plus one, 0 for a block stored here. An int32 and not the
// pack's name: a 15 GiB cluster's block lists have 500k entries, and as
// strings they were 8 MB the collector scanned on every cycle.
type foreignPack int32

// foreignTable interns the pack names foreignPack values stand for. Its
// methods are called with copier.mu held, or before any worker runs.
type foreignTable struct {
	names []string
	idx   map[string]foreignPack
	// byRef caches the reference's packs by their index in its table.
	byRef []foreignPack
}

// of is name's foreignPack ("" is 0).
func (t *foreignTable) of(name string) foreignPack {
	if name == "" {
		return 0
	}
	if p, ok := t.idx[name]; ok {
		return p
	}
	if t.idx == nil {
		t.idx = map[string]foreignPack{}
	}
	t.names = append(t.names, name)
	p := foreignPack(len(t.names))
	t.idx[name] = p
	return p
}

// ofRef is the foreignPack of pack k of the reference's table packs.
func (t *foreignTable) ofRef(packs []repo.Pack, k int) foreignPack {
	if t.byRef == nil {
		t.byRef = make([]foreignPack, len(packs))
	}
	if t.byRef[k] == 0 {
		t.byRef[k] = t.of(packs[k].Name)
	}
	return t.byRef[k]
}

// name is p's pack name, "" for 0.
func (t *foreignTable) name(p foreignPack) string {
	if p == 0 {
		return ""
	}
	return t.names[p-1]
}

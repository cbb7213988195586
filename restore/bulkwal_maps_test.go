package restore

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pgkeep/pgkeep/pg"
	"github.com/pgkeep/pgkeep/repo"
	"github.com/pgkeep/pgkeep/storage"
	"github.com/pgkeep/pgkeep/storage/mem"
)

// Block maps and roll-ups beside the WAL change nothing in restore's bulk
// download plan: a repository with them plans exactly what one without
// does, and no map is ever planned as a segment.
func TestPlanBulkWALIgnoresBlockMaps(t *testing.T) {
	ctx := context.Background()
	plan := func(withMaps bool) string {
		b := mem.New()
		if _, err := repo.Init(ctx, b, repo.InitOptions{CompressionLevel: 1, Now: time.Now()}); err != nil {
			t.Fatal(err)
		}
		r, err := repo.Open(ctx, b, repo.OpenOptions{CompressionLevel: -1})
		if err != nil {
			t.Fatal(err)
		}
		// Segments 3..5, and maps of 3..7: 6 and 7 only have (stray) maps.
		for n := 3; n <= 7; n++ {
			wf, _ := pg.ParseWALFileName(pg.SegmentName(1, 0, uint32(n)))
			if n <= 5 {
				b.Put(ctx, repo.WALObjectName(wf), strings.NewReader("x"), storage.PutOptions{})
			}
			if withMaps {
				b.Put(ctx, repo.WALMapObjectName(wf), strings.NewReader("m"), storage.PutOptions{})
			}
		}
		if withMaps {
			f, _ := pg.ParseWALFileName(pg.SegmentName(1, 0, 6))
			l, _ := pg.ParseWALFileName(pg.SegmentName(1, 0, 9))
			b.Put(ctx, repo.WALRollupObjectName(f, l), strings.NewReader("r"), storage.PutOptions{})
		}
		m := &repo.Manifest{Summary: repo.Summary{ID: "b", StartWAL: pg.SegmentName(1, 0, 3), SegmentSize: pg.DefaultSegmentSize}}
		p, err := PlanBulkWAL(ctx, r, m, 1, nil, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		var s []string
		for _, wf := range p.Segments {
			s = append(s, wf.Name)
		}
		return strings.Join(s, " ")
	}
	with, without := plan(true), plan(false)
	if with != without || strings.Count(without, " ") != 2 {
		t.Fatalf("plan with maps %q, without %q", with, without)
	}
}

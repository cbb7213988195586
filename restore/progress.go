package restore

import (
	"os"
	"time"

	"github.com/pgkeep/pgkeep/pg"
)

// LocalWAL is what a recovery has waiting in its prefetch directory.
type LocalWAL struct {
	// Segments are downloaded and not yet handed to PostgreSQL.
	Segments int
	// Last is the furthest segment downloaded (the bulk download's last or
	// the newest prefetched one); ok false when there is none.
	Last pg.WALFile
	OK   bool
}

// ReadLocalWAL looks at the prefetch directory dir.
func ReadLocalWAL(dir string) LocalWAL {
	var l LocalWAL
	if wf, ok := readBulkMarker(dir); ok {
		l.Last, l.OK = wf, true
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return l
	}
	for _, e := range entries {
		n := e.Name()
		if len(n) != 24+1+64 || n[24] != '.' {
			continue
		}
		wf, err := pg.ParseWALFileName(n[:24])
		if err != nil || wf.Kind != pg.KindSegment {
			continue
		}
		l.Segments++
		if !l.OK || wf.Timeline > l.Last.Timeline || (wf.Timeline == l.Last.Timeline && wf.Name > l.Last.Name) {
			l.Last, l.OK = wf, true
		}
	}
	return l
}

// ReplayRate estimates replay speed from samples of the replay LSN over a
// sliding window.
type ReplayRate struct {
	Window  time.Duration
	samples []rateSample
}

type rateSample struct {
	at  time.Time
	lsn pg.LSN
}

// Add records that replay had reached lsn at time at.
func (r *ReplayRate) Add(at time.Time, lsn pg.LSN) {
	if n := len(r.samples); n > 0 && lsn < r.samples[n-1].lsn {
		r.samples = r.samples[:0] // a restart from an earlier point
	}
	r.samples = append(r.samples, rateSample{at, lsn})
	w := r.Window
	if w <= 0 {
		w = 10 * time.Second
	}
	// Keep one sample older than the window, so the window is covered.
	for len(r.samples) > 2 && at.Sub(r.samples[1].at) >= w {
		r.samples = r.samples[1:]
	}
}

// BytesPerSecond is the replay rate over the window (0 when unknown).
func (r *ReplayRate) BytesPerSecond() float64 {
	if len(r.samples) < 2 {
		return 0
	}
	a, b := r.samples[0], r.samples[len(r.samples)-1]
	d := b.at.Sub(a.at).Seconds()
	if d <= 0 || b.lsn <= a.lsn {
		return 0
	}
	return float64(b.lsn-a.lsn) / d
}

// ETA is how long replay from lsn to end takes at rate bytes a second
// (0 when unknown or done).
func ETA(lsn, end pg.LSN, rate float64) time.Duration {
	if rate <= 0 || end <= lsn {
		return 0
	}
	return time.Duration(float64(end-lsn) / rate * float64(time.Second))
}

// SegmentEnd is the LSN just past segment wf.
func SegmentEnd(wf pg.WALFile, segSize int64) pg.LSN {
	return pg.LSN((wf.SegNo(segSize) + 1) * uint64(segSize))
}

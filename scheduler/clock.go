package scheduler

import (
	"context"
	"encoding/json"
	"sort"
	"strings"
	"sync"
	"time"
)

// The cluster's clock. etcd has no time of its own to ask, so the daemons
// compare clocks through it: each writes clocks/<member> = its own time
// every poll interval, and reads the others'. A peer's value read at local
// time l was written at most a poll interval (plus etcd's latency) before,
// so value - l is a lower bound of the peer's offset, within that error;
// the largest of the last few samples is kept.
//
// Cluster time is this node's clock plus the lower median of the offsets
// of the daemons heard from lately (this node's own offset, 0, included).
// With one clock off among three, the median is one of the two that agree,
// so a node whose clock runs ahead does not start a scheduled time before
// the others' clocks reach it; with two daemons the slower clock wins
// (skew then delays a start, it cannot advance one). Offsets larger than
// SkewWarn are logged and exported (pgkeep_clock_offset_seconds).

const clockSamples = 5

type peerClock struct {
	last    time.Time // the peer's last written time
	seen    time.Time // local time when last changed
	samples []float64 // offsets in seconds, newest last
	warned  bool
}

type clockRecord struct {
	Member string    `json:"member"`
	Time   time.Time `json:"time"`
}

type clocks struct {
	mu    sync.Mutex
	peers map[string]*peerClock
	// rounds counts successful heartbeats; ready is closed after
	// settleRounds of them, when the peers' offsets are known: no
	// scheduled time starts before (a fast clock would start it early).
	rounds int
	ready  chan struct{}
}

const settleRounds = 3

func clockName(member string) string { return "clocks/" + member }

// offset is a peer's estimated offset in seconds (its clock minus ours).
func (p *peerClock) offset() float64 {
	best := p.samples[0]
	for _, v := range p.samples[1:] {
		best = max(best, v)
	}
	return best
}

// skewWarn is the offset from which a peer's clock is reported.
func (s *Scheduler) skewWarn() time.Duration { return max(5*time.Second, 2*s.o.PollInterval) }

// heartbeat writes this node's clock (which also proves etcd answers) and
// reads the other daemons'. It returns the write's error.
func (s *Scheduler) heartbeat(ctx context.Context) error {
	if err := s.o.HA.Put(ctx, clockName(s.o.Member), clockRecord{Member: s.o.Member, Time: s.now().UTC()}); err != nil {
		return err
	}
	es, err := s.o.HA.List(ctx, "clocks/")
	if err != nil {
		return err
	}
	local := s.now()
	s.clk.mu.Lock()
	defer s.clk.mu.Unlock()
	if s.clk.rounds++; s.clk.rounds == settleRounds {
		close(s.clk.ready)
	}
	for _, e := range es {
		var r clockRecord
		if json.Unmarshal(e.Value, &r) != nil || r.Member == "" || r.Member == s.o.Member || strings.Contains(r.Member, "/") {
			continue
		}
		p := s.clk.peers[r.Member]
		if p == nil {
			p = &peerClock{}
			s.clk.peers[r.Member] = p
		}
		if r.Time.Equal(p.last) {
			continue
		}
		fresh := !p.last.IsZero() // a first value may be old: skip it
		p.last, p.seen = r.Time, local
		if !fresh {
			continue
		}
		p.samples = append(p.samples, r.Time.Sub(local).Seconds())
		if len(p.samples) > clockSamples {
			p.samples = p.samples[1:]
		}
		off := p.offset()
		s.o.Metrics.setClockOffset(r.Member, off)
		big := time.Duration(abs(off)*float64(time.Second)) > s.skewWarn()
		switch {
		case big && !p.warned && len(p.samples) >= 2:
			p.warned = true
			s.log.Warn("clock skew: another daemon's clock differs from this node's; scheduled starts follow the median clock of the daemons, fix NTP",
				"member", r.Member, "offset_seconds", round1(off))
		case !big && p.warned:
			p.warned = false
			s.log.Info("clock skew gone", "member", r.Member, "offset_seconds", round1(off))
		}
	}
	return nil
}

func abs(f float64) float64 {
	if f < 0 {
		return -f
	}
	return f
}

func round1(f float64) float64 { return float64(int64(f*10)) / 10 }

// clusterNow is the cluster's time as this node estimates it.
func (s *Scheduler) clusterNow() time.Time {
	local := s.now()
	offs := []float64{0}
	s.clk.mu.Lock()
	for _, p := range s.clk.peers {
		// Heard from lately, and with a sample.
		if len(p.samples) > 0 && local.Sub(p.seen) < 3*s.o.PollInterval+2*time.Second {
			offs = append(offs, p.offset())
		}
	}
	s.clk.mu.Unlock()
	sort.Float64s(offs)
	return local.Add(time.Duration(offs[(len(offs)-1)/2] * float64(time.Second)))
}

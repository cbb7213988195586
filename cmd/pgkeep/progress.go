package main

import (
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// newProgress shows a progress bar (bytes, rate, ETA) on a terminal and
// logs a structured line every 10 seconds otherwise.
func newProgress(what string, log *slog.Logger) progress {
	if term.IsTerminal(int(os.Stderr.Fd())) {
		return &barProgress{what: what}
	}
	return &logProgress{what: what, log: log}
}

type progress interface {
	Start(total int64)
	Add(n int64)
	Finish()
}

type barProgress struct {
	what string
	bar  *progressbar.ProgressBar
}

func (p *barProgress) Start(total int64) {
	p.bar = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionSetDescription(p.what),
		progressbar.OptionShowBytes(true),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionShowElapsedTimeOnFinish(),
		progressbar.OptionThrottle(200*time.Millisecond),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetWidth(30))
}

func (p *barProgress) Add(n int64) { p.bar.Add64(n) }
func (p *barProgress) Finish()     { p.bar.Finish() }

type logProgress struct {
	what  string
	log   *slog.Logger
	total int64
	done  atomic.Int64
	start time.Time
	stop  chan struct{}
	once  sync.Once
}

func (p *logProgress) Start(total int64) {
	p.total, p.start, p.stop = total, time.Now(), make(chan struct{})
	go func() {
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				done := p.done.Load()
				rate := float64(done) / time.Since(p.start).Seconds()
				eta := time.Duration(0)
				if rate > 0 {
					eta = time.Duration(float64(p.total-done)/rate) * time.Second
				}
				p.log.Info(p.what+" progress", "bytes", done, "total", p.total, "mb_per_s", int(rate/1e6), "eta", eta.Round(time.Second).String())
			}
		}
	}()
}

func (p *logProgress) Add(n int64) { p.done.Add(n) }
func (p *logProgress) Finish() {
	p.once.Do(func() {
		if p.stop != nil {
			close(p.stop)
		}
	})
}

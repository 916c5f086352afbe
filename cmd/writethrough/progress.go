package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
)

// progress draws a one-line progress bar with a rate and an ETA. It draws
// only when stdout is a terminal; otherwise every method is a no-op, so
// scripts and tests see the plain result.
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	label string
	total int64
	start time.Time
	last  time.Time
	on    bool
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// newProgress returns a bar for total items (0 when unknown).
func (c *cli) newProgress(label string, total int64) *progress {
	return &progress{w: c.stdout, label: label, total: total, start: time.Now(), on: isTerminal(c.stdout)}
}

// Set records that done items are finished; it redraws at most every 100ms.
func (p *progress) Set(done int64) {
	if p == nil || !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if now.Sub(p.last) < 100*time.Millisecond {
		return
	}
	p.last = now
	fmt.Fprintf(p.w, "\r\x1b[K%s", p.line(done, now))
}

// Done clears the bar so the result prints on a clean line.
func (p *progress) Done() {
	if p == nil || !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprint(p.w, "\r\x1b[K")
}

func (p *progress) line(done int64, now time.Time) string {
	elapsed := now.Sub(p.start).Seconds()
	rate := 0.0
	if elapsed > 0 {
		rate = float64(done) / elapsed
	}
	if p.total <= 0 {
		return fmt.Sprintf("%s %d  %s/s", p.label, done, human(rate))
	}
	frac := min(float64(done)/float64(p.total), 1)
	const width = 30
	fill := int(frac * width)
	eta := "?"
	if rate > 0 {
		eta = (time.Duration(float64(p.total-done)/rate) * time.Second).Round(time.Second).String()
	}
	return fmt.Sprintf("%s [%s%s] %3.0f%% %d/%d  %s/s  ETA %s",
		p.label, strings.Repeat("=", fill), strings.Repeat(" ", width-fill), frac*100, done, p.total, human(rate), eta)
}

// human writes n with a k or M suffix.
func human(n float64) string {
	switch {
	case n >= 1e6:
		return fmt.Sprintf("%.1fM", n/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1fk", n/1e3)
	}
	return fmt.Sprintf("%.0f", n)
}

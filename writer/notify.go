package writer

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/writethrough/writethrough/outbox"
)

// waker wakes the relays after commits, off the request path. Commits that
// arrive while a NOTIFY is being sent fold into the next one. A wake-up lost
// to a crash only delays the relay until its next poll.
type waker struct {
	parts   atomic.Uint64 // outbox.PartSet of the commits not yet notified
	local   LocalRelay    // may be nil
	pool    *pgxpool.Pool
	log     *slog.Logger
	wake    chan struct{}
	done    chan struct{}
	stopped chan struct{}
}

// The least time between two NOTIFYs of one Writer is notifyGap. While
// commits keep coming (the next ones are already waiting when a gap ends),
// it doubles with each NOTIFY up to maxNotifyGap, and drops back once a gap
// passes without a commit. Each NOTIFY is a transaction of its own that
// costs Postgres about half what a small write does: sustained writes would
// otherwise send up to a thousand a second, mostly to relays that are busy
// working the last one's entries anyway. An idle relay hears of a commit
// within notifyGap after a quiet moment, within maxNotifyGap under load.
const (
	notifyGap    = time.Millisecond
	maxNotifyGap = 4 * time.Millisecond
)

// nextGap is the gap after one of gap: longer when commits came during it
// (busy), back to notifyGap when none did.
func nextGap(gap time.Duration, busy bool) time.Duration {
	if !busy {
		return notifyGap
	}
	return min(2*gap, maxNotifyGap)
}

func newWaker(pool *pgxpool.Pool, log *slog.Logger, local LocalRelay) *waker {
	k := &waker{pool: pool, log: log, local: local, wake: make(chan struct{}, 1), done: make(chan struct{}), stopped: make(chan struct{})}
	go k.loop()
	return k
}

// poke hands a commit's entries to the local relay for the partitions it
// holds (cached: the cache took them all), and asks for a NOTIFY for the
// others; it never blocks.
func (k *waker) poke(entries []*outbox.Entry, cached bool) {
	var parts outbox.PartSet
	if k.local != nil {
		parts = k.local.WakeHeld(entries, cached)
	} else {
		for _, e := range entries {
			parts = parts.With(e.Partition)
		}
	}
	if parts == 0 {
		return
	}
	k.parts.Or(uint64(parts))
	select {
	case k.wake <- struct{}{}:
	default:
	}
}

func (k *waker) loop() {
	defer close(k.stopped)
	gap := notifyGap
	for {
		select {
		case <-k.wake:
		case <-k.done:
			return
		}
		parts := outbox.PartSet(k.parts.Swap(0))
		if parts == 0 {
			continue // an earlier NOTIFY took this poke's partitions
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := outbox.NotifyParts(ctx, k.pool, parts); err != nil {
			k.log.Debug("wake relays", slog.String("error", err.Error()))
		}
		cancel()
		// Under load, fold the commits of the next moment into one NOTIFY
		// rather than send one per commit.
		t := time.NewTimer(gap)
		select {
		case <-t.C:
		case <-k.done:
			t.Stop()
			return
		}
		gap = nextGap(gap, k.parts.Load() != 0)
	}
}

func (k *waker) stop() {
	close(k.done)
	<-k.stopped
}

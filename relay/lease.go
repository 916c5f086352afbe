package relay

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/writethrough/writethrough/outbox"
)

// lease is a partition this relay holds. deadline is when the lease runs out
// by this relay's own (monotonic) clock: the start of the statement that
// set it plus LeaseTTL, never later than the database's lease_until.
type lease struct {
	epoch    int64
	deadline time.Time
	// drainAfter > 0: the partition is being given up; it is released once
	// the round numbered drainAfter (the one running when the drain began)
	// has ended, so no publish of it is still in flight.
	drainAfter int64
}

// leaseTable is the relay's view of its leases.
type leaseTable struct {
	owner  string
	margin time.Duration

	mu   sync.Mutex
	held map[int32]*lease
}

func newLeaseTable(owner string, ttl time.Duration) *leaseTable {
	return &leaseTable{owner: owner, margin: ttl * 2 / 5, held: map[int32]*lease{}}
}

// workable returns the leases the worker may work now: not draining, with
// more than the margin left by our clock.
func (t *leaseTable) workable() []outbox.Lease {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]outbox.Lease, 0, len(t.held))
	for p, l := range t.held {
		if l.drainAfter == 0 && now.Add(t.margin).Before(l.deadline) {
			out = append(out, outbox.Lease{Part: p, Epoch: l.epoch})
		}
	}
	slices.SortFunc(out, func(a, b outbox.Lease) int { return int(a.Part - b.Part) })
	return out
}

// valid reports whether the worker may still publish in part at epoch.
func (t *leaseTable) valid(part int32, epoch int64) bool {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.held[part]
	return l != nil && l.epoch == epoch && l.drainAfter == 0 && now.Add(t.margin).Before(l.deadline)
}

// all returns every lease still held, draining ones included.
func (t *leaseTable) all() []outbox.Lease {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]outbox.Lease, 0, len(t.held))
	for p, l := range t.held {
		out = append(out, outbox.Lease{Part: p, Epoch: l.epoch})
	}
	return out
}

func (t *leaseTable) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.held)
}

// tickLeases heartbeats, renews the leases, gives up the ones above the fair
// share and takes free or expired ones up to it.
func (r *Relay) tickLeases(ctx context.Context) {
	t := r.leases
	ttl := r.cfg.LeaseTTL
	start := time.Now()
	alive, err := outbox.Heartbeat(ctx, r.pool, r.cfg.ID, r.hostname, r.pid, ttl)
	if err != nil {
		r.log.Warn("relay heartbeat failed", slog.String("error", err.Error()))
		return
	}
	share := (outbox.Partitions + alive - 1) / alive

	// Renew.
	if held := t.all(); len(held) > 0 {
		renewed, err := outbox.Renew(ctx, r.pool, outbox.NewHeld(t.owner, held), ttl)
		if err != nil {
			r.log.Warn("renew leases failed", slog.String("error", err.Error()))
			return
		}
		t.mu.Lock()
		ok := make(map[int32]bool, len(renewed))
		for _, p := range renewed {
			ok[p] = true
		}
		for p, l := range t.held {
			if ok[p] {
				l.deadline = start.Add(ttl)
			} else {
				delete(t.held, p)
				r.log.Warn("lease lost", slog.Int("partition", int(p)), slog.Int64("epoch", l.epoch))
			}
		}
		t.mu.Unlock()
	}

	// Give up partitions above the fair share: stop working them now,
	// release them once the round in progress ended.
	started, done := r.roundsStarted.Load(), r.roundsDone.Load()
	var release []outbox.Lease
	t.mu.Lock()
	active := 0
	var parts []int32
	for p, l := range t.held {
		if l.drainAfter == 0 {
			active++
			parts = append(parts, p)
		} else if done >= l.drainAfter {
			release = append(release, outbox.Lease{Part: p, Epoch: l.epoch})
		}
	}
	if excess := active - share; excess > 0 {
		slices.Sort(parts)
		for _, p := range parts[len(parts)-excess:] {
			t.held[p].drainAfter = max(started, 1)
			if started == done {
				release = append(release, outbox.Lease{Part: p, Epoch: t.held[p].epoch})
			}
		}
	}
	t.mu.Unlock()
	if len(release) > 0 {
		if err := outbox.Release(ctx, r.pool, outbox.NewHeld(t.owner, release)); err != nil {
			r.log.Warn("release leases failed", slog.String("error", err.Error()))
		} else {
			t.mu.Lock()
			for _, l := range release {
				delete(t.held, l.Part)
			}
			t.mu.Unlock()
		}
	}

	// Take free or expired partitions up to the share.
	if want := share - t.count(); want > 0 {
		got, err := outbox.Acquire(ctx, r.pool, t.owner, want, ttl)
		if err != nil {
			r.log.Warn("acquire leases failed", slog.String("error", err.Error()))
			return
		}
		if len(got) > 0 {
			t.mu.Lock()
			for _, l := range got {
				t.held[l.Part] = &lease{epoch: l.Epoch, deadline: start.Add(ttl)}
			}
			t.mu.Unlock()
			r.log.Debug("leases acquired", slog.Int("partitions", len(got)))
			r.wakeup()
		}
	}
}

// releaseAll gives up every lease (at Stop, after the worker ended).
func (r *Relay) releaseAll(ctx context.Context) error {
	held := r.leases.all()
	if len(held) == 0 {
		return nil
	}
	err := outbox.Release(ctx, r.pool, outbox.NewHeld(r.leases.owner, held))
	r.leases.mu.Lock()
	clear(r.leases.held)
	r.leases.mu.Unlock()
	return err
}

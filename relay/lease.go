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
	// draining: the partition is being given up; it is released once none
	// of its entries is being worked (busy), so no publish of it is still
	// in flight and no mark of it is pending.
	draining bool
}

// leaseTable is the relay's view of its leases.
type leaseTable struct {
	owner  string
	margin time.Duration

	mu   sync.Mutex
	held map[int32]*lease
	// busy counts, per partition, the entries the worker has claimed and
	// not finished: queued, in flight, being repaired or awaiting a mark.
	busy map[int32]int
}

func newLeaseTable(owner string, ttl time.Duration) *leaseTable {
	return &leaseTable{owner: owner, margin: ttl * 2 / 5, held: map[int32]*lease{}, busy: map[int32]int{}}
}

// addBusy changes the count of entries of part being worked.
func (t *leaseTable) addBusy(part int32, n int) {
	t.mu.Lock()
	if v := t.busy[part] + n; v > 0 {
		t.busy[part] = v
	} else {
		delete(t.busy, part)
	}
	t.mu.Unlock()
}

// workable returns the leases the worker may work now: not draining, with
// more than the margin left by our clock.
func (t *leaseTable) workable() []outbox.Lease {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]outbox.Lease, 0, len(t.held))
	for p, l := range t.held {
		if t.usable(l, now) {
			out = append(out, outbox.Lease{Part: p, Epoch: l.epoch})
		}
	}
	slices.SortFunc(out, func(a, b outbox.Lease) int { return int(a.Part - b.Part) })
	return out
}

// workableSet is the partitions of workable.
func (t *leaseTable) workableSet() outbox.PartSet {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	var s outbox.PartSet
	for p, l := range t.held {
		if t.usable(l, now) {
			s = s.With(int(p))
		}
	}
	return s
}

// usable reports whether l may be worked at now: not draining, and not
// within the safety margin of its deadline.
func (t *leaseTable) usable(l *lease, now time.Time) bool {
	return !l.draining && now.Add(t.margin).Before(l.deadline)
}

// epochOf returns the epoch of part, if the worker may work it now.
func (t *leaseTable) epochOf(part int32) (int64, bool) {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.held[part]
	if l == nil || !t.usable(l, now) {
		return 0, false
	}
	return l.epoch, true
}

// valid reports whether the worker may still publish in part at epoch.
func (t *leaseTable) valid(part int32, epoch int64) bool {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.held[part]
	return l != nil && l.epoch == epoch && t.usable(l, now)
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
	// release them once none of their entries is being worked. The worker
	// checks valid (under the same lock) before every publish and counts an
	// entry busy before that, so nothing of a released partition is in
	// flight.
	var release []outbox.Lease
	t.mu.Lock()
	active := 0
	var parts []int32
	for p, l := range t.held {
		if !l.draining {
			active++
			parts = append(parts, p)
		} else if t.busy[p] == 0 {
			release = append(release, outbox.Lease{Part: p, Epoch: l.epoch})
		}
	}
	if excess := active - share; excess > 0 {
		slices.Sort(parts)
		for _, p := range parts[len(parts)-excess:] {
			t.held[p].draining = true
			if t.busy[p] == 0 {
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

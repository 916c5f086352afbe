package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/writethrough/writethrough/internal/cloudevent"
	"github.com/writethrough/writethrough/internal/fence"
	"github.com/writethrough/writethrough/outbox"
)

// work runs rounds until Stop: right away after a round that made progress,
// otherwise on a notification or the poll interval; after an outage it
// waits a poll interval whatever wakes it.
func (r *Relay) work() {
	poll := time.NewTicker(r.cfg.PollInterval)
	defer poll.Stop()
	for {
		select {
		case <-r.stopping:
			return
		case <-r.hardCtx.Done():
			return
		default:
		}
		progress, outage := r.round(r.hardCtx)
		if progress && !outage {
			continue
		}
		if outage {
			select {
			case <-r.stopping:
				return
			case <-r.hardCtx.Done():
				return
			case <-time.After(r.cfg.PollInterval):
			}
			continue
		}
		select {
		case <-r.stopping:
			return
		case <-r.hardCtx.Done():
			return
		case <-r.wake:
		case <-poll.C:
		}
	}
}

// keyQueue is the work of one entity key in a round: its events to publish
// in version order (one in flight at a time) and whether its cache needs a
// repair.
type keyQueue struct {
	col, id string
	part    int32
	epoch   int64
	entries []*outbox.Claimed
	next    int
	repair  bool
	maxSeen int64 // highest claimed version, for a key without a row
}

type flight struct {
	q     *keyQueue
	e     *outbox.Claimed
	round int64
}

type result struct {
	f   *flight
	err error
}

type failed struct {
	e      *outbox.Claimed
	err    error
	poison bool
}

// round claims the due work of the workable partitions, repairs the cache
// and publishes events concurrently, and marks what succeeded. progress
// reports that something was marked; outage that Postgres, Redis or NATS
// was unavailable.
func (r *Relay) round(ctx context.Context) (progress, outage bool) {
	n := r.roundsStarted.Add(1)
	defer r.roundsDone.Add(1)
	held := r.leases.workable()
	if len(held) == 0 {
		return false, false
	}
	parts := make([]int32, len(held))
	epochs := make(map[int32]int64, len(held))
	for i, l := range held {
		parts[i] = l.Part
		epochs[l.Part] = l.Epoch
	}
	began := time.Now()
	claimed, err := outbox.Claim(ctx, r.pool, parts, r.cfg.BatchPerPartition, r.cfg.RepairGrace)
	claimDur := time.Since(began)
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("claim failed", slog.String("error", err.Error()))
		}
		return false, true
	}
	if len(claimed) == 0 {
		return false, false
	}
	ctx, span := r.tracer.Start(ctx, "relay.round", trace.WithAttributes(attribute.Int("entries", len(claimed))))
	defer span.End()

	type key struct{ c, id string }
	byKey := make(map[key]*keyQueue)
	var queues, repairs []*keyQueue
	for _, c := range claimed {
		k := key{c.Collection, c.EntityID}
		q := byKey[k]
		if q == nil {
			q = &keyQueue{col: c.Collection, id: c.EntityID, part: int32(c.Partition), epoch: epochs[int32(c.Partition)]}
			byKey[k] = q
			queues = append(queues, q)
		}
		q.maxSeen = max(q.maxSeen, c.Version)
		if c.RepairDue && !q.repair {
			q.repair = true
			repairs = append(repairs, q)
		}
		// A key whose oldest pending event waits for a retry is parked:
		// none of its later events may overtake it.
		if c.PublishPending && q.next == 0 {
			if c.Due {
				q.entries = append(q.entries, c)
			} else {
				q.next = -1
			}
		}
	}
	h := outbox.NewHeld(r.cfg.ID, held)

	var wg sync.WaitGroup
	var repaired int64
	var repairOutage bool
	if len(repairs) > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			repaired, repairOutage = r.repair(ctx, h, repairs)
		}()
	}
	published, pubOutage := r.publish(ctx, h, n, queues)
	wg.Wait()
	r.log.Debug("round", slog.Int("entries", len(claimed)), slog.Int64("published", published), slog.Int64("repaired", repaired),
		slog.Duration("claim", claimDur), slog.Duration("total", time.Since(began)))
	return published+repaired > 0, pubOutage || repairOutage
}

// repair rewrites each key's cache entry from its current row through the
// fence, then marks the key's pending cache writes up to that version done.
// The outbox payload is never written to the cache: the fence would let an
// old version into a key that lost its newer value.
func (r *Relay) repair(ctx context.Context, h outbox.Held, qs []*keyQueue) (marked int64, outage bool) {
	cols, ids := make([]string, len(qs)), make([]string, len(qs))
	for i, q := range qs {
		cols[i], ids[i] = q.col, q.id
	}
	rows, err := outbox.CurrentRows(ctx, r.pool, cols, ids)
	if err != nil {
		r.log.Warn("cache repair: read rows failed", slog.String("error", err.Error()))
		return 0, true
	}
	entries := make([]fence.Entry, len(rows))
	for i, row := range rows {
		entries[i] = fence.Entry{Collection: row.Collection, ID: row.ID, Version: row.Version, Data: row.Data, UpdatedAt: outbox.FormatTime(row.UpdatedAt)}
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	outcomes, err := r.fence.Apply(cctx, entries...)
	cancel()
	var done []outbox.Repaired
	var applied int64
	found := make(map[[2]string]bool, len(rows))
	for i, row := range rows {
		found[[2]string{row.Collection, row.ID}] = true
		switch outcomes[i] {
		case fence.Applied:
			applied++
			fallthrough
		case fence.FencedOut:
			done = append(done, outbox.Repaired{Collection: row.Collection, ID: row.ID, Version: row.Version})
		}
	}
	// A key without a row has nothing to repair (repair never deletes).
	for i, q := range qs {
		if !found[[2]string{cols[i], ids[i]}] {
			done = append(done, outbox.Repaired{Collection: cols[i], ID: ids[i], Version: q.maxSeen})
		}
	}
	if err != nil && ctx.Err() == nil {
		r.log.Warn("cache repair: redis write failed; will retry", slog.Int("keys", len(entries)), slog.String("error", err.Error()))
		outage = true
	}
	if applied > 0 {
		r.metrics.repairs.Add(ctx, applied)
	}
	if len(done) == 0 {
		return 0, outage
	}
	crashpoint("relay-after-repair")
	r.markMu.Lock() // marks of one round touch the same rows: never concurrently
	n, err := outbox.MarkRepaired(ctx, r.pool, h, done)
	r.markMu.Unlock()
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("cache repair: mark failed", slog.String("error", err.Error()))
		}
		return 0, true
	}
	return n, outage
}

// publish sends the events of the queues: many keys in flight at once, at
// most one event per key, the next event of a key only after the previous
// one was acknowledged. Acknowledged events are marked in one statement.
func (r *Relay) publish(ctx context.Context, h outbox.Held, round int64, queues []*keyQueue) (marked int64, outage bool) {
	ready := make([]*keyQueue, 0, len(queues))
	for _, q := range queues {
		if q.next == 0 && len(q.entries) > 0 {
			ready = append(ready, q)
		}
	}
	if len(ready) == 0 {
		return 0, false
	}
	if r.nc.Status() != nats.CONNECTED {
		return 0, true
	}
	if !r.streamReady.Load() {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := r.ensureStream(sctx)
		cancel()
		if err != nil {
			r.log.Warn("stream not ready", slog.String("error", err.Error()))
			return 0, true
		}
	}
	reconnects := r.nc.Stats().Reconnects
	maxPayload := r.nc.MaxPayload()

	var acked []int64
	var fails []failed
	inflight := 0
	for {
		for inflight < r.cfg.MaxInFlight && len(ready) > 0 && ctx.Err() == nil {
			q := ready[len(ready)-1]
			ready = ready[:len(ready)-1]
			if !r.leases.valid(q.part, q.epoch) {
				continue // lease running out: leave the rest to its next owner
			}
			e := q.entries[q.next]
			msg := cloudevent.Encode(&e.Entry, r.cfg.Source, r.cfg.SubjectPrefix)
			if size := cloudevent.Size(msg); maxPayload > 0 && size > maxPayload {
				fails = append(fails, failed{e: e, err: fmt.Errorf("%w: %d bytes, max %d", ErrTooLarge, size, maxPayload), poison: true})
				if q.advance() {
					ready = append(ready, q)
				}
				continue
			}
			f := &flight{q: q, e: e, round: round}
			r.flightMu.Lock()
			r.flights[msg] = f
			r.flightMu.Unlock()
			if _, err := r.js.PublishMsgAsync(msg); err != nil {
				r.flightMu.Lock()
				delete(r.flights, msg)
				r.flightMu.Unlock()
				if errors.Is(err, nats.ErrMaxPayload) {
					fails = append(fails, failed{e: e, err: fmt.Errorf("%w: %w", ErrTooLarge, err), poison: true})
					if q.advance() {
						ready = append(ready, q)
					}
					continue
				}
				fails = append(fails, failed{e: e, err: err})
				continue
			}
			inflight++
		}
		if inflight == 0 {
			break
		}
		var res result
		select {
		case res = <-r.results:
		case <-ctx.Done():
			return 0, true // abandoned; the entries are worked again later
		}
		if res.f.round != round {
			continue
		}
		inflight--
		if res.err != nil {
			fails = append(fails, failed{e: res.f.e, err: res.err})
			continue
		}
		acked = append(acked, res.f.e.Seq)
		if res.f.q.advance() {
			ready = append(ready, res.f.q)
		}
	}

	if len(acked) > 0 {
		crashpoint("relay-after-publish")
		r.markMu.Lock()
		n, err := outbox.MarkPublished(ctx, r.pool, h, acked)
		r.markMu.Unlock()
		if err != nil {
			if ctx.Err() == nil {
				r.log.Warn("mark published failed", slog.String("error", err.Error()))
			}
			outage = true
		}
		marked = n
		r.metrics.published.Add(ctx, int64(len(acked)))
	}
	if len(fails) > 0 {
		brokerDown := r.nc.Status() != nats.CONNECTED || r.nc.Stats().Reconnects != reconnects || len(acked) == 0
		if r.recordFailures(ctx, h, fails, brokerDown) {
			outage = true
		}
	}
	return marked, outage
}

// advance moves q to its next event; false when none is left.
func (q *keyQueue) advance() bool {
	q.next++
	return q.next < len(q.entries)
}

// recordFailures counts failed attempts, schedules retries with backoff and
// makes dead letters. When the broker was unavailable (brokerDown), failures
// that say so are not attempts: nothing goes dead because NATS was down.
// It reports whether any failure was such an outage.
func (r *Relay) recordFailures(ctx context.Context, h outbox.Held, fails []failed, brokerDown bool) (outage bool) {
	var fs []outbox.Failure
	for _, f := range fails {
		if !f.poison && brokerDown && IsOutage(f.err) {
			outage = true
			if errors.Is(f.err, jetstream.ErrNoStreamResponse) || errors.Is(f.err, nats.ErrNoResponders) {
				r.streamReady.Store(false) // the stream may be gone; create it again
			}
			continue
		}
		attempt := f.e.Attempts + 1
		dead := f.poison || attempt >= r.cfg.MaxAttempts
		fs = append(fs, outbox.Failure{Seq: f.e.Seq, Err: f.err.Error(), Dead: dead, Retry: r.retryDelay(attempt)})
	}
	if len(fs) == 0 {
		return outage
	}
	if _, err := outbox.MarkFailed(ctx, r.pool, h, fs); err != nil {
		if ctx.Err() == nil {
			r.log.Warn("record publish failures failed", slog.String("error", err.Error()))
		}
		return true
	}
	for i, f := range fs {
		e := fails[i].e
		if !f.Dead {
			r.metrics.retries.Add(ctx, 1)
			continue
		}
		r.metrics.dead.Add(ctx, 1, metric.WithAttributes(attribute.String("collection", e.Collection)))
		r.log.Error("event is a dead letter",
			slog.String("collection", e.Collection), slog.String("id", e.EntityID),
			slog.Int64("version", e.Version), slog.Int64("seq", e.Seq), slog.String("event_id", e.EventID.String()),
			slog.String("attempts", strconv.Itoa(e.Attempts+1)), slog.String("error", f.Err))
	}
	return outage
}

// retryDelay is the backoff before attempt+1: exponential with jitter.
func (r *Relay) retryDelay(attempt int) time.Duration {
	b := &backoff.ExponentialBackOff{
		InitialInterval:     r.cfg.RetryInitial,
		RandomizationFactor: 0.5,
		Multiplier:          2,
		MaxInterval:         r.cfg.RetryMax,
		Stop:                backoff.Stop,
		Clock:               backoff.SystemClock,
	}
	b.Reset()
	d := b.NextBackOff()
	for i := 1; i < attempt; i++ {
		d = b.NextBackOff()
	}
	return d
}

func (r *Relay) onAck(_ jetstream.JetStream, m *nats.Msg, _ *jetstream.PubAck) { r.resolve(m, nil) }

func (r *Relay) onErr(_ jetstream.JetStream, m *nats.Msg, err error) { r.resolve(m, err) }

func (r *Relay) resolve(m *nats.Msg, err error) {
	r.flightMu.Lock()
	f := r.flights[m]
	delete(r.flights, m)
	r.flightMu.Unlock()
	if f == nil {
		return
	}
	select {
	case r.results <- result{f: f, err: err}:
	default:
		// Cannot happen: results holds MaxInFlight; drop rather than block
		// the NATS callback goroutine. The entry is worked again later.
	}
}

package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/writethrough/writethrough/internal/cloudevent"
	"github.com/writethrough/writethrough/internal/crashpoint"
	"github.com/writethrough/writethrough/internal/fence"
	"github.com/writethrough/writethrough/outbox"
)

// keyID names an entity.
type keyID struct{ c, id string }

// keyQueue is the publish work of one key: its claimed events in version
// order, at most one of them in flight. The next event of a key is
// published only after the previous one was acknowledged.
type keyQueue struct {
	k        keyID
	part     int32
	epoch    int64
	pending  []*outbox.Claimed
	inflight bool
	last     int64 // version of the newest entry queued
	// closed: the queue was given up (the key is parked, or its partition
	// is no longer workable); nothing more is added to it or published.
	closed bool
}

// parkedKey is a key whose events wait: for the retry of a failed attempt,
// or for the broker after an outage. Its claimed entries stay excluded from
// claims until then, so they neither overtake the failed one nor use up the
// claim's batch.
type parkedKey struct {
	until time.Time
	// marking: the failed attempt is still being recorded; the key waits
	// for that whatever until says.
	marking bool
	refs    []ref
}

// ref is one reason the worker keeps an entry out of claims. A busy ref
// (publish or repair work in progress) also keeps its partition's lease
// from being released.
type ref struct {
	seq  int64
	part int32
	busy bool
}

type flight struct {
	q          *keyQueue
	e          *outbox.Claimed
	sent       time.Time
	reconnects uint64
	span       trace.Span
}

type result struct {
	f   *flight
	err error
}

// markItem is finished work of one entry waiting to be marked.
type markItem struct {
	seq        int64
	part       int32
	epoch      int64
	pub, cache bool
	// settle: the cache was seen holding this version when the event was
	// claimed; the mark settles the cache state without a repair (and
	// carries no ref of its own).
	settle bool
}

// failItem is a failed attempt waiting to be recorded.
type failItem struct {
	e     *outbox.Claimed
	part  int32
	epoch int64
	f     outbox.Failure
}

type claimResult struct {
	rows   []*outbox.Claimed
	epochs map[int32]int64
	full   bool // some partition had more work than the batch
	err    error
	took   time.Duration
	gen    uint64
}

type repairItem struct {
	c     *outbox.Claimed
	epoch int64
}

type repairResult struct {
	done, retry []repairItem
	outage      bool
}

type markResult struct {
	items            []*markItem
	fails            []failItem
	markErr, failErr error
}

// hold keeps refs out of claims until a time (after an outage), then lets
// the entries be claimed again.
type hold struct {
	until time.Time
	refs  []ref
	keys  []keyID
	// cache: the refs are repair refs (see worker.openCache).
	cache bool
}

// worker is the relay's pipeline. One goroutine owns all of its state; the
// claim, the repair and the mark each run in a goroutine of their own, at
// most one of each at a time, and hand their results back over channels. So
// a claim never waits for a mark, publishing never waits for either, and the
// publish window stays full across batches.
type worker struct {
	r *Relay

	tracked map[int64]trackCount // entries out of claims, with their refs
	busyN   int                  // busy refs, bounds what a claim adds

	keys     map[keyID]*keyQueue
	parked   map[keyID]*parkedKey
	ready    []*keyQueue // queues whose next event can go out now
	queued   int         // claimed events not yet published
	inflight int

	claiming, wantClaim, more bool
	claimPause                time.Time
	// claimGen numbers the claims. released[k] is the newest claim that may
	// have been in flight when entries of key k went back to being claimable
	// (a park or hold ended, a queue closed): such a claim left those entries
	// out as in-progress but may hold later ones of k, so its rows of k are
	// dropped and claimed again in order.
	claimGen uint64
	released map[keyID]uint64
	// openCache holds the entries whose repair (and its cache mark) is in
	// progress while their event is still unpublished. That repair ref does
	// not keep the entry out of claims: the entry must still come back for
	// publishing in its key's order, or a later version would go out first.
	openCache map[int64]bool
	// published is, per key, the newest version published (acknowledged)
	// here, for onHandoff. Bounded by maxPublished.
	published map[keyID]int64

	repairQ     []repairItem
	repairing   bool
	repairPause time.Time
	// repairAt is when the earliest entry a claim left waiting for its
	// repair grace (its cache write not known to have succeeded) is due:
	// a claim then, not the next poll, repairs it.
	repairAt time.Time

	marking   bool
	markPause time.Time
	lastMark  time.Time // when the last marking statement went out
	markBuf   map[int64]*markItem
	fails     []failItem
	holds     []hold

	pubPause time.Time
	lastAck  time.Time
	stopping bool

	claimCh  chan claimResult
	repairCh chan repairResult
	markCh   chan markResult
}

type trackCount struct {
	n    int32
	part int32
}

// maxPublished bounds the keys worker.published remembers.
const maxPublished = 1 << 16

// markBatch bounds the entries of one marking statement.
const markBatch = 8192

// Marks are off the path of events (an event is out once acknowledged), so
// a few finished entries wait up to markLinger after the last marking
// statement for company: at a thousand events a second, marking each batch
// as it came cost Postgres a statement for every event or two, as much as
// the writes. A batch of markEager entries, a failed attempt (its key waits
// for the record) and a stopping relay mark at once.
const (
	markLinger = 5 * time.Millisecond
	markEager  = 256
)

// markWait is how long finished work waits before it is marked: zero when
// it goes now. n is the entries finished, fails whether attempts failed.
func markWait(now, lastMark time.Time, n int, fails, stopping bool) time.Duration {
	if fails || stopping || n >= markEager {
		return 0
	}
	return max(lastMark.Add(markLinger).Sub(now), 0)
}

var traceContext propagation.TraceContext

// work runs the pipeline until Stop (finishing the work in flight: every
// publish acknowledged or failed, and marked) or until the hard stop.
func (r *Relay) work() {
	w := &worker{
		r:         r,
		tracked:   map[int64]trackCount{},
		keys:      map[keyID]*keyQueue{},
		parked:    map[keyID]*parkedKey{},
		released:  map[keyID]uint64{},
		openCache: map[int64]bool{},
		published: map[keyID]int64{},
		markBuf:   map[int64]*markItem{},
		claimCh:   make(chan claimResult, 1),
		repairCh:  make(chan repairResult, 1),
		markCh:    make(chan markResult, 1),
	}
	w.wantClaim = true
	poll := time.NewTicker(r.cfg.PollInterval)
	defer poll.Stop()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	stopping := r.stopping
	for {
		now := time.Now()
		w.expire(now)
		w.startClaim(now)
		w.startRepair(now)
		w.dispatch(now)
		w.startMark()
		if w.stopping && w.inflight == 0 && !w.claiming && !w.repairing && !w.marking && len(w.markBuf) == 0 && len(w.fails) == 0 {
			return
		}
		if next := w.nextDeadline(); !next.IsZero() {
			timer.Reset(max(time.Until(next), time.Millisecond))
		} else {
			timer.Reset(time.Hour)
		}
		select {
		case <-r.hardCtx.Done():
			return
		case <-stopping:
			stopping = nil
			w.stop()
		case res := <-r.results:
			w.onResult(res)
			// Take every result that is already there before deciding.
			for n := len(r.results); n > 0; n-- {
				w.onResult(<-r.results)
			}
		case res := <-w.claimCh:
			w.onClaim(res)
		case res := <-w.repairCh:
			w.onRepair(res)
		case res := <-w.markCh:
			w.onMark(res)
		case hs := <-r.handoff:
			w.onHandoff(hs)
		case <-r.wake:
			// startClaim reads the partitions it was woken for.
		case <-poll.C:
			w.wantClaim = true
		case <-timer.C:
		}
	}
}

// stop begins a graceful stop: nothing new is claimed or published; what
// is in flight finishes and is marked.
func (w *worker) stop() {
	w.stopping = true
	for _, q := range w.ready {
		w.closeQueue(q)
	}
	w.ready = nil
	for _, it := range w.repairQ {
		w.untrackCache(ref{it.c.Seq, int32(it.c.Partition), true})
	}
	w.repairQ = nil
}

func (w *worker) track(x ref) {
	t := w.tracked[x.seq]
	t.n++
	t.part = x.part
	w.tracked[x.seq] = t
	if x.busy {
		w.busyN++
		w.r.leases.addBusy(x.part, 1)
	}
}

func (w *worker) untrack(x ref) {
	t, ok := w.tracked[x.seq]
	if !ok {
		return
	}
	if t.n--; t.n <= 0 {
		delete(w.tracked, x.seq)
	} else {
		w.tracked[x.seq] = t
	}
	if x.busy {
		w.busyN--
		w.r.leases.addBusy(x.part, -1)
	}
}

// repairSlack is added to the repair grace when a claim schedules the
// claim that repairs what it left waiting: the database's clock decides
// when an entry is due.
const repairSlack = 10 * time.Millisecond

// maxBusy bounds the entries being worked at once.
func (w *worker) maxBusy() int { return 4 * w.r.cfg.MaxInFlight }

// startClaim reads new work when something may be there (a notification,
// the poll interval, a claim that filled its batch) and the pipeline has
// room for it.
func (w *worker) startClaim(now time.Time) {
	r := w.r
	if w.claiming || w.stopping || now.Before(w.claimPause) || w.busyN >= w.maxBusy() {
		return
	}
	// A claim that filled a partition's batch says more is waiting: read
	// on while the pipeline has room, so the next batch is there before
	// the window runs dry.
	// A notification names the partitions it is for; the poll interval, a
	// full batch and a retry read every partition held.
	if !w.wantClaim && !w.more && r.wakeParts.Load() == 0 {
		return
	}
	want := outbox.PartSet(r.wakeParts.Swap(0))
	if w.wantClaim || w.more {
		want = outbox.AllParts
	}
	w.wantClaim, w.more = false, false
	held := slices.DeleteFunc(r.leases.workable(), func(l outbox.Lease) bool { return !want.Has(int(l.Part)) })
	if len(held) == 0 {
		return
	}
	parts := make([]int32, len(held))
	epochs := make(map[int32]int64, len(held))
	for i, l := range held {
		parts[i] = l.Part
		epochs[l.Part] = l.Epoch
	}
	exclude := make([]int64, 0, len(w.tracked))
	for seq := range w.tracked {
		if w.excluded(seq) {
			exclude = append(exclude, seq)
		}
	}
	w.claiming = true
	w.claimGen++
	gen := w.claimGen
	perPart := r.cfg.BatchPerPartition
	go func() {
		began := time.Now()
		rows, err := outbox.Claim(r.hardCtx, r.pool, parts, perPart, r.cfg.RepairGrace, exclude)
		if err == nil {
			r.checkCache(rows)
		}
		res := claimResult{rows: rows, epochs: epochs, err: err, took: time.Since(began), gen: gen}
		n := 0
		for i, c := range rows {
			if i > 0 && c.Partition != rows[i-1].Partition {
				n = 0
			}
			if n++; n >= perPart {
				res.full = true
			}
		}
		w.claimCh <- res
	}()
}

// checkCache looks, in one pipelined read, at the cache keys of claimed
// events whose cache state is unsettled, and flags the ones the cache holds
// at their version or newer. Marking such an event published settles its
// cache state in the same statement, so a write whose synchronous cache
// write succeeded costs one mark and no repair. A failed read flags nothing:
// those entries are repaired from the current row after the grace period.
func (r *Relay) checkCache(rows []*outbox.Claimed) {
	var check []*outbox.Claimed
	var keys []string
	for _, c := range rows {
		if c.CachePending && c.PublishPending && !c.RepairDue {
			if r.takeHeld(c.Seq) {
				c.CacheHeld = true // the writer saw the cache take it
				continue
			}
			check = append(check, c)
			keys = append(keys, r.fence.Key(c.Collection, c.EntityID))
		}
	}
	if len(keys) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(r.hardCtx, 2*time.Second)
	defer cancel()
	cached, hit, err := r.fence.GetMany(ctx, keys)
	if err != nil {
		return
	}
	for i, c := range check {
		c.CacheHeld = hit[i] && cached[i].Version >= c.Version
	}
}

func (w *worker) onClaim(res claimResult) {
	r := w.r
	w.claiming = false
	if res.err != nil {
		if r.hardCtx.Err() == nil {
			r.log.Warn("claim failed", slog.String("error", res.err.Error()))
		}
		w.claimPause = time.Now().Add(r.cfg.PollInterval)
		w.wantClaim = true
		return
	}
	if w.stopping {
		return
	}
	w.more = res.full
	now := time.Now()
	for _, c := range res.rows {
		if w.excluded(c.Seq) {
			continue // handed off (onHandoff) while the claim ran
		}
		part := int32(c.Partition)
		epoch := res.epochs[part]
		if c.CachePending && !c.RepairDue && !c.CacheHeld {
			// Committed before the claim, so due within the grace.
			if due := now.Add(r.cfg.RepairGrace + repairSlack); w.repairAt.IsZero() || due.Before(w.repairAt) {
				w.repairAt = due
			}
		}
		if _, repairing := w.tracked[c.Seq]; c.RepairDue && !repairing {
			w.track(ref{c.Seq, part, true})
			if c.PublishPending {
				w.openCache[c.Seq] = true
			}
			w.repairQ = append(w.repairQ, repairItem{c, epoch})
		}
		if !c.PublishPending {
			continue
		}
		k := keyID{c.Collection, c.EntityID}
		if g, ok := w.released[k]; ok && res.gen <= g {
			w.wantClaim = true // an earlier entry of k may be missing here
			continue
		}
		if p := w.parked[k]; p != nil {
			x := ref{c.Seq, part, false}
			w.track(x)
			p.refs = append(p.refs, x)
			continue
		}
		q := w.keys[k]
		if q != nil && q.closed {
			continue // given up while its last publish is in flight; claimed again later
		}
		if !c.Due {
			// The key's oldest pending event waits for its retry: park
			// the key. A queue still working an earlier version is closed
			// and the later claim finds the waiting entry again.
			if q != nil {
				w.closeQueue(q)
				continue
			}
			x := ref{c.Seq, part, false}
			w.track(x)
			w.parked[k] = &parkedKey{until: now.Add(max(c.DueIn, 0)), refs: []ref{x}}
			continue
		}
		if q == nil {
			q = &keyQueue{k: k, part: part, epoch: epoch}
			w.keys[k] = q
		}
		w.enqueue(q, c)
	}
	for k, g := range w.released {
		if g < res.gen {
			delete(w.released, k)
		}
	}
	if len(res.rows) > 0 {
		r.log.Debug("claimed", slog.Int("entries", len(res.rows)), slog.Duration("took", res.took),
			slog.Int("queued", w.queued), slog.Int("in_flight", w.inflight), slog.Int("busy", w.busyN))
	}
}

// enqueue adds c to its key's queue, to be published after the events
// queued before it.
func (w *worker) enqueue(q *keyQueue, c *outbox.Claimed) {
	q.pending = append(q.pending, c)
	q.last = c.Version
	w.queued++
	w.track(ref{c.Seq, q.part, true})
	if !q.inflight && len(q.pending) == 1 {
		w.ready = append(w.ready, q)
	}
}

// onHandoff takes entries a writer in this process has just committed and
// seen the cache take, and queues them for publishing without a claim. A
// claim finds, per partition in seq order, every pending entry of a key
// before its later ones; a handed entry carries no such proof, so it is
// queued only where its key's order is known here: the key's previous
// version is the newest queued or in flight here, or was published here
// (acknowledged), or there is none (version 1). Versions of a key are
// contiguous, so this holds whoever else worked the key in between: any
// other version there means a mismatch. Every other entry is left to a
// claim of its partition (WakeHeld noted that the cache took it). An entry
// a claim has already brought is skipped; a claim that brings one of these
// later skips it (it is tracked).
func (w *worker) onHandoff(hs []*outbox.Claimed) {
	var claim outbox.PartSet
	for _, c := range hs {
		switch {
		case w.excluded(c.Seq):
			w.r.takeHeld(c.Seq) // its claim has read the note already
		case !w.handOff(c):
			claim = claim.With(c.Partition)
		}
	}
	if claim != 0 {
		w.r.wakeFor(claim)
	}
}

// handOff queues c if its key's order allows it (see onHandoff).
func (w *worker) handOff(c *outbox.Claimed) bool {
	if w.stopping || w.busyN >= w.maxBusy() {
		return false
	}
	part := int32(c.Partition)
	epoch, ok := w.r.leases.epochOf(part)
	if !ok {
		return false
	}
	k := keyID{c.Collection, c.EntityID}
	if _, released := w.released[k]; released || w.parked[k] != nil {
		return false
	}
	q := w.keys[k]
	switch {
	case q != nil:
		if q.closed || q.epoch != epoch || q.last != c.Version-1 {
			return false
		}
	case w.published[k] == c.Version-1: // 0 for a key never published here
		q = &keyQueue{k: k, part: part, epoch: epoch}
		w.keys[k] = q
	default:
		return false
	}
	w.enqueue(q, c)
	w.r.takeHeld(c.Seq) // its claim, if any, is skipped: no need to remember
	return true
}

// closeQueue gives up a key's queued events (not the one in flight): they
// are claimed again later.
func (w *worker) closeQueue(q *keyQueue) {
	if len(q.pending) > 0 {
		w.release(q.k)
	}
	for _, e := range q.pending {
		w.untrack(ref{e.Seq, q.part, true})
	}
	w.queued -= len(q.pending)
	q.pending = nil
	q.closed = true
	if !q.inflight && w.keys[q.k] == q {
		delete(w.keys, q.k)
	}
}

// park makes key q wait until the given time: its queued events move out
// of the queue but stay out of claims.
func (w *worker) park(q *keyQueue, until time.Time, marking bool) *parkedKey {
	p := w.parked[q.k]
	if p == nil {
		p = &parkedKey{}
		w.parked[q.k] = p
	}
	if until.After(p.until) {
		p.until = until
	}
	p.marking = p.marking || marking
	for _, e := range q.pending {
		x := ref{e.Seq, q.part, false}
		w.track(x)
		p.refs = append(p.refs, x)
	}
	w.closeQueue(q)
	return p
}

// dispatch publishes the next event of ready keys while the window has room.
func (w *worker) dispatch(now time.Time) {
	r := w.r
	if len(w.ready) == 0 || now.Before(w.pubPause) {
		return
	}
	if r.nc.Status() != nats.CONNECTED {
		w.pubPause = now.Add(r.cfg.PollInterval)
		return
	}
	if !r.streamReady.Load() {
		sctx, cancel := context.WithTimeout(r.hardCtx, 2*time.Second)
		err := r.ensureStream(sctx)
		cancel()
		if err != nil {
			r.log.Warn("stream not ready", slog.String("error", err.Error()))
			w.pubPause = time.Now().Add(r.cfg.PollInterval)
			return
		}
	}
	reconnects := r.nc.Stats().Reconnects
	maxPayload := r.nc.MaxPayload()
	i := 0
	for ; i < len(w.ready) && w.inflight < r.cfg.MaxInFlight; i++ {
		q := w.ready[i]
		if q.closed || q.inflight || len(q.pending) == 0 {
			continue
		}
		if !r.leases.valid(q.part, q.epoch) {
			w.closeQueue(q) // lease running out: leave the key to its next owner
			continue
		}
		e := q.pending[0]
		q.pending = q.pending[1:]
		w.queued--
		msg := cloudevent.Encode(&e.Entry, r.cfg.Source, r.cfg.SubjectPrefix)
		if size := cloudevent.Size(msg); maxPayload > 0 && size > maxPayload {
			w.failed(q, e, fmt.Errorf("%w: %d bytes, max %d", ErrTooLarge, size, maxPayload), true, false)
			continue
		}
		f := &flight{q: q, e: e, sent: now, reconnects: reconnects, span: r.startSpan(e, msg)}
		r.flightMu.Lock()
		r.flights[msg] = f
		r.flightMu.Unlock()
		q.inflight = true
		w.inflight++
		if _, err := r.js.PublishMsgAsync(msg); err != nil {
			r.flightMu.Lock()
			delete(r.flights, msg)
			r.flightMu.Unlock()
			q.inflight = false
			w.inflight--
			endSpan(f.span, err)
			if errors.Is(err, nats.ErrMaxPayload) {
				w.failed(q, e, fmt.Errorf("%w: %w", ErrTooLarge, err), true, false)
				continue
			}
			w.failed(q, e, err, false, IsOutage(err))
		}
	}
	w.ready = append(w.ready[:0], w.ready[i:]...)
}

// startSpan starts the producer span of an event as a child of the trace
// stored with the change; an entry without one gets no span.
func (r *Relay) startSpan(e *outbox.Claimed, msg *nats.Msg) trace.Span {
	if e.Traceparent == "" {
		return nil
	}
	carrier := propagation.MapCarrier{"traceparent": e.Traceparent}
	if e.Tracestate != "" {
		carrier["tracestate"] = e.Tracestate
	}
	ctx := traceContext.Extract(context.Background(), carrier)
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return nil
	}
	_, span := r.tracer.Start(ctx, "publish "+msg.Subject, trace.WithSpanKind(trace.SpanKindProducer))
	if span.IsRecording() {
		span.SetAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.operation.type", "send"),
			attribute.String("messaging.destination.name", msg.Subject),
			attribute.String("messaging.message.id", e.EventID.String()),
			attribute.Int64("writethrough.entity.version", e.Version),
		)
	}
	return span
}

func endSpan(span trace.Span, err error) {
	if span == nil {
		return
	}
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

func (w *worker) onResult(res result) {
	f := res.f
	q := f.q
	w.inflight--
	q.inflight = false
	endSpan(f.span, res.err)
	if res.err != nil {
		r := w.r
		outage := IsOutage(res.err) &&
			(r.nc.Status() != nats.CONNECTED || r.nc.Stats().Reconnects != f.reconnects || w.lastAck.Before(f.sent))
		w.failed(q, f.e, res.err, false, outage)
		return
	}
	w.lastAck = time.Now()
	if len(w.published) >= maxPublished {
		clear(w.published) // forgotten keys' entries go by claim
	}
	w.published[q.k] = f.e.Version
	w.addMark(f.e.Seq, q.part, q.epoch, true, false)
	if f.e.CacheHeld {
		w.markBuf[f.e.Seq].settle = true
	}
	w.r.metrics.published.Add(context.Background(), 1)
	w.advance(q)
}

// advance makes q ready for its next event, or forgets it.
func (w *worker) advance(q *keyQueue) {
	switch {
	case q.closed:
		if w.keys[q.k] == q {
			delete(w.keys, q.k)
		}
	case w.stopping:
		w.closeQueue(q)
	case len(q.pending) > 0:
		w.ready = append(w.ready, q)
	default:
		delete(w.keys, q.k)
	}
}

// failed handles a publish of e that did not succeed. A broker outage
// (outage) burns no attempt: the key waits a poll interval and its events
// are claimed again. Otherwise the attempt is recorded: a poison event or
// one out of attempts becomes a dead letter and the key moves on; any
// other waits for its retry with the key parked behind it.
func (w *worker) failed(q *keyQueue, e *outbox.Claimed, err error, poison, outage bool) {
	r := w.r
	now := time.Now()
	if !poison && outage {
		if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
			r.streamReady.Store(false) // the stream may be gone; create it again
		}
		if !now.Before(w.pubPause) {
			r.log.Warn("publish failed: broker unavailable; will retry", slog.String("error", err.Error()))
		}
		w.pubPause = now.Add(r.cfg.PollInterval)
		w.untrack(ref{e.Seq, q.part, true})
		p := w.park(q, w.pubPause, false)
		x := ref{e.Seq, q.part, false}
		w.track(x)
		p.refs = append(p.refs, x)
		return
	}
	attempt := e.Attempts + 1
	dead := poison || attempt >= r.cfg.MaxAttempts
	delay := r.retryDelay(attempt)
	w.fails = append(w.fails, failItem{e: e, part: q.part, epoch: q.epoch,
		f: outbox.Failure{Seq: e.Seq, Part: q.part, Err: err.Error(), Dead: dead, Retry: delay}})
	// The key waits until the attempt is recorded: a dead letter lets it move
	// on only once the database says so, since a failed record leaves the
	// entry pending and it would be published again after later versions.
	until := now.Add(delay)
	if dead {
		until = now
	}
	w.park(q, until, true)
}

func (w *worker) addMark(seq int64, part int32, epoch int64, pub, cache bool) {
	it := w.markBuf[seq]
	if it == nil {
		it = &markItem{seq: seq, part: part, epoch: epoch}
		w.markBuf[seq] = it
	}
	// Each flag carries the busy ref of its work, released after the mark.
	if pub && it.pub || cache && it.cache {
		w.untrack(ref{seq, part, true})
	}
	it.pub = it.pub || pub
	it.cache = it.cache || cache
}

// startMark records finished work and failed attempts, one batch at a time,
// while publishing goes on.
func (w *worker) startMark() {
	now := time.Now()
	if w.marking || (len(w.markBuf) == 0 && len(w.fails) == 0) || now.Before(w.markPause) ||
		markWait(now, w.lastMark, len(w.markBuf), len(w.fails) > 0, w.stopping) > 0 {
		return
	}
	w.lastMark = now
	r := w.r
	items := make([]*markItem, 0, min(len(w.markBuf), markBatch))
	for seq, it := range w.markBuf {
		if len(items) == markBatch {
			break
		}
		items = append(items, it)
		delete(w.markBuf, seq)
	}
	fails := w.fails
	w.fails = nil
	w.marking = true
	go func() {
		res := markResult{items: items, fails: fails}
		ctx := r.hardCtx
		if len(items) > 0 {
			done := make([]outbox.Done, len(items))
			var leases []outbox.Lease
			seen := map[outbox.Lease]bool{}
			pub := false
			for i, it := range items {
				done[i] = outbox.Done{Seq: it.seq, Part: it.part, Published: it.pub, Cached: it.cache || it.settle}
				pub = pub || it.pub
				if l := (outbox.Lease{Part: it.part, Epoch: it.epoch}); !seen[l] {
					seen[l] = true
					leases = append(leases, l)
				}
			}
			if pub {
				crashpoint.Hit("relay-after-publish")
			}
			began := time.Now()
			_, res.markErr = outbox.MarkDone(ctx, r.pool, outbox.NewHeld(r.cfg.ID, leases), done)
			r.log.Debug("marked", slog.Int("entries", len(done)), slog.Duration("took", time.Since(began)))
		}
		if len(fails) > 0 {
			fs := make([]outbox.Failure, len(fails))
			var leases []outbox.Lease
			seen := map[outbox.Lease]bool{}
			for i, f := range fails {
				fs[i] = f.f
				if l := (outbox.Lease{Part: f.part, Epoch: f.epoch}); !seen[l] {
					seen[l] = true
					leases = append(leases, l)
				}
			}
			_, res.failErr = outbox.MarkFailed(ctx, r.pool, outbox.NewHeld(r.cfg.ID, leases), fs)
		}
		w.markCh <- res
	}()
}

func (w *worker) onMark(res markResult) {
	r := w.r
	w.marking = false
	now := time.Now()
	if res.markErr != nil {
		// Marks are idempotent: keep the entries (out of claims, so
		// nothing is published again) and mark them again, at once after
		// a deadlock with another marking statement, else after a poll
		// interval.
		pause := r.cfg.PollInterval
		var pgErr *pgconn.PgError
		if errors.As(res.markErr, &pgErr) && (pgErr.Code == "40P01" || pgErr.Code == "40001") {
			pause = 0
		} else if r.hardCtx.Err() == nil {
			r.log.Warn("mark failed; will retry", slog.Int("entries", len(res.items)), slog.String("error", res.markErr.Error()))
		}
		w.markPause = now.Add(pause)
		for _, it := range res.items {
			if cur := w.markBuf[it.seq]; cur != nil {
				// Work finished again meanwhile: one ref per flag.
				if cur.pub && it.pub || cur.cache && it.cache {
					w.untrack(ref{it.seq, it.part, true})
				}
				cur.pub, cur.cache, cur.settle = cur.pub || it.pub, cur.cache || it.cache, cur.settle || it.settle
				continue
			}
			w.markBuf[it.seq] = it
		}
	} else {
		for _, it := range res.items {
			if it.pub {
				w.untrack(ref{it.seq, it.part, true})
			}
			if it.cache {
				w.untrackCache(ref{it.seq, it.part, true})
			}
		}
	}
	if len(res.fails) == 0 {
		return
	}
	if res.failErr != nil {
		if r.hardCtx.Err() == nil {
			r.log.Warn("record publish failures failed", slog.String("error", res.failErr.Error()))
		}
		// The entries stay pending; each waits with its key parked behind
		// it, so no later version of the key is claimed and published first.
		until := now.Add(r.cfg.PollInterval)
		h := hold{until: until}
		for _, f := range res.fails {
			x := ref{f.e.Seq, f.part, true}
			p := w.parked[keyID{f.e.Collection, f.e.EntityID}]
			if p == nil {
				h.refs = append(h.refs, x)
				h.keys = append(h.keys, keyID{f.e.Collection, f.e.EntityID})
				continue
			}
			p.marking = false
			if until.After(p.until) {
				p.until = until
			}
			w.untrack(x)
			x.busy = false
			w.track(x)
			p.refs = append(p.refs, x)
		}
		if len(h.refs) > 0 {
			w.holds = append(w.holds, h)
		}
		return
	}
	for _, f := range res.fails {
		e := f.e
		x := ref{e.Seq, f.part, true}
		if !f.f.Dead {
			r.metrics.retries.Add(context.Background(), 1)
			if p := w.parked[keyID{e.Collection, e.EntityID}]; p != nil {
				// The failed entry stays out of claims with its key.
				w.untrack(x)
				x.busy = false
				w.track(x)
				p.refs = append(p.refs, x)
				p.marking = false
				continue
			}
			w.untrack(x)
			w.release(keyID{e.Collection, e.EntityID})
			continue
		}
		w.untrack(x)
		if p := w.parked[keyID{e.Collection, e.EntityID}]; p != nil {
			p.marking = false // recorded: the key moves on
		}
		r.metrics.dead.Add(context.Background(), 1, metric.WithAttributes(attribute.String("collection", e.Collection)))
		r.log.Error("event is a dead letter",
			slog.String("collection", e.Collection), slog.String("id", e.EntityID),
			slog.Int64("version", e.Version), slog.Int64("seq", e.Seq), slog.String("event_id", e.EventID.String()),
			slog.String("attempts", strconv.Itoa(e.Attempts+1)), slog.String("error", f.f.Err))
	}
}

// excluded reports whether seq has a ref that keeps it out of claims:
// any ref but an open repair ref.
func (w *worker) excluded(seq int64) bool {
	t, ok := w.tracked[seq]
	if !ok {
		return false
	}
	if w.openCache[seq] {
		return t.n > 1
	}
	return t.n > 0
}

// untrackCache drops the repair ref of seq.
func (w *worker) untrackCache(x ref) {
	w.untrack(x)
	delete(w.openCache, x.seq)
}

// release records that entries of k may be claimable again while a claim is
// in flight.
func (w *worker) release(k keyID) { w.released[k] = w.claimGen }

// expire ends the parks and holds whose time has come; their entries are
// claimed again.
func (w *worker) expire(now time.Time) {
	if !w.repairAt.IsZero() && !now.Before(w.repairAt) {
		w.repairAt = time.Time{}
		w.wantClaim = true
	}
	for k, p := range w.parked {
		if p.marking || now.Before(p.until) {
			continue
		}
		for _, x := range p.refs {
			w.untrack(x)
		}
		delete(w.parked, k)
		w.release(k)
		w.wantClaim = true
	}
	kept := w.holds[:0]
	for _, h := range w.holds {
		if now.Before(h.until) {
			kept = append(kept, h)
			continue
		}
		for _, x := range h.refs {
			if h.cache {
				w.untrackCache(x)
			} else {
				w.untrack(x)
			}
		}
		for _, k := range h.keys {
			w.release(k)
		}
		w.wantClaim = true
	}
	w.holds = kept
}

// nextDeadline is the earliest time something waits for, or zero.
func (w *worker) nextDeadline() time.Time {
	var next time.Time
	at := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	now := time.Now()
	if len(w.ready) > 0 && now.Before(w.pubPause) {
		at(w.pubPause)
	}
	if (w.wantClaim || w.more || w.r.wakeParts.Load() != 0) && now.Before(w.claimPause) {
		at(w.claimPause)
	}
	if len(w.repairQ) > 0 && now.Before(w.repairPause) {
		at(w.repairPause)
	}
	for _, p := range w.parked {
		if !p.marking {
			at(p.until)
		}
	}
	for _, h := range w.holds {
		at(h.until)
	}
	at(w.repairAt)
	if len(w.markBuf) > 0 && now.Before(w.markPause) {
		at(w.markPause)
	}
	if d := markWait(now, w.lastMark, len(w.markBuf), len(w.fails) > 0, w.stopping); len(w.markBuf) > 0 && d > 0 {
		at(now.Add(d))
	}
	return next
}

// startRepair rewrites the cache of the keys whose synchronous write did
// not succeed, one batch at a time, alongside publishing.
func (w *worker) startRepair(now time.Time) {
	if w.repairing || len(w.repairQ) == 0 || now.Before(w.repairPause) {
		return
	}
	batch := w.repairQ
	if len(batch) > markBatch {
		batch = batch[:markBatch]
	}
	w.repairQ = append([]repairItem(nil), w.repairQ[len(batch):]...)
	w.repairing = true
	go func() { w.repairCh <- w.r.repair(w.r.hardCtx, batch) }()
}

func (w *worker) onRepair(res repairResult) {
	w.repairing = false
	for _, it := range res.done {
		w.addMark(it.c.Seq, int32(it.c.Partition), it.epoch, false, true)
	}
	if len(res.retry) > 0 {
		h := hold{until: time.Now().Add(w.r.cfg.PollInterval), cache: true}
		for _, it := range res.retry {
			h.refs = append(h.refs, ref{it.c.Seq, int32(it.c.Partition), true})
			h.keys = append(h.keys, keyID{it.c.Collection, it.c.EntityID})
		}
		w.holds = append(w.holds, h)
	}
	if res.outage {
		w.repairPause = time.Now().Add(w.r.cfg.PollInterval)
	}
}

// repair rewrites each key's cache entry from its current row through the
// fence, once per key however many of its entries are pending. The entries
// up to the version written are done. The outbox payload is never written
// to the cache: the fence would let an old version into a key that lost
// its newer value.
func (r *Relay) repair(ctx context.Context, items []repairItem) repairResult {
	byKey := make(map[keyID][]repairItem)
	var cols, ids []string
	for _, it := range items {
		k := keyID{it.c.Collection, it.c.EntityID}
		if _, ok := byKey[k]; !ok {
			cols, ids = append(cols, k.c), append(ids, k.id)
		}
		byKey[k] = append(byKey[k], it)
	}
	rows, err := outbox.CurrentRows(ctx, r.pool, cols, ids)
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("cache repair: read rows failed", slog.String("error", err.Error()))
		}
		return repairResult{retry: items, outage: true}
	}
	entries := make([]fence.Entry, len(rows))
	for i, row := range rows {
		entries[i] = fence.Entry{Collection: row.Collection, ID: row.ID, Version: row.Version, Data: row.Data, UpdatedAt: outbox.FormatTime(row.UpdatedAt)}
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	outcomes, err := r.fence.Apply(cctx, entries...)
	cancel()
	var res repairResult
	var applied int64
	for i, row := range rows {
		k := keyID{row.Collection, row.ID}
		its := byKey[k]
		delete(byKey, k)
		ok := false
		switch outcomes[i] {
		case fence.Applied:
			applied++
			ok = true
		case fence.FencedOut:
			ok = true
		}
		for _, it := range its {
			if ok && it.c.Version <= row.Version {
				res.done = append(res.done, it)
			} else {
				res.retry = append(res.retry, it)
			}
		}
	}
	// A key without a row has nothing to repair (repair never deletes).
	for _, its := range byKey {
		res.done = append(res.done, its...)
	}
	if err != nil && ctx.Err() == nil {
		r.log.Warn("cache repair: redis write failed; will retry", slog.Int("keys", len(entries)), slog.String("error", err.Error()))
		res.outage = true
	}
	if applied > 0 {
		r.metrics.repairs.Add(ctx, applied)
	}
	if len(res.done) > 0 {
		crashpoint.Hit("relay-after-repair")
	}
	return res
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

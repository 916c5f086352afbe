package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/writethrough/writethrough/internal/fence"
	"github.com/writethrough/writethrough/outbox"
)

// Relay works the outbox. Create it with New, run it with Start, end it with
// Stop.
type Relay struct {
	cfg      Config
	pool     *pgxpool.Pool
	fence    *fence.Fence
	nc       *nats.Conn
	js       jetstream.JetStream
	log      *slog.Logger
	tracer   trace.Tracer
	metrics  *metrics
	leases   *leaseTable
	hostname string
	pid      int

	wake      chan struct{}
	wakeParts atomic.Uint64 // outbox.PartSet notified since the last claim

	// Entries (by seq) a writer in this process saw the cache take: a
	// claim settles them without reading the cache. Bounded by maxHeldSeqs.
	heldMu   sync.Mutex
	heldSeqs map[int64]struct{}
	// Entries a writer in this process just committed, for the worker to
	// publish without claiming them (see worker.onHandoff).
	handoff chan []*outbox.Claimed

	// In-flight publishes by message, resolved by the JetStream callbacks.
	flightMu sync.Mutex
	flights  map[*nats.Msg]*flight
	results  chan result

	streamReady atomic.Bool
	streamErr   atomic.Pointer[streamState]

	startOnce sync.Once
	stopOnce  sync.Once
	started   atomic.Bool
	killed    atomic.Bool
	stopping  chan struct{} // closed by Stop: finish the work in flight, then end
	hardCtx   context.Context
	hardStop  context.CancelFunc // abandons work in progress
	bgCancel  context.CancelFunc // ends the lease, listen and housekeeping loops
	workDone  chan struct{}
	leaseDone chan struct{}
	bg        sync.WaitGroup
	stopped   chan struct{}
	stopErr   error
}

// New returns a Relay for cfg. It does not touch the network.
func New(cfg Config) (*Relay, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.MeterProvider)
	if err != nil {
		return nil, fmt.Errorf("relay metrics: %w", err)
	}
	host, _ := os.Hostname()
	r := &Relay{
		cfg:       cfg,
		pool:      cfg.Pool,
		fence:     cfg.Fence,
		nc:        cfg.NATS,
		log:       cfg.Logger.With(slog.String("relay", cfg.ID)),
		tracer:    cfg.TracerProvider.Tracer("github.com/writethrough/writethrough/relay"),
		metrics:   m,
		leases:    newLeaseTable(cfg.ID, cfg.LeaseTTL),
		hostname:  host,
		pid:       os.Getpid(),
		wake:      make(chan struct{}, 1),
		heldSeqs:  map[int64]struct{}{},
		handoff:   make(chan []*outbox.Claimed, 1024),
		flights:   map[*nats.Msg]*flight{},
		results:   make(chan result, cfg.MaxInFlight+16),
		stopping:  make(chan struct{}),
		workDone:  make(chan struct{}),
		leaseDone: make(chan struct{}),
		stopped:   make(chan struct{}),
	}
	r.js, err = jetstream.New(cfg.NATS,
		jetstream.WithPublishAsyncMaxPending(cfg.MaxInFlight),
		jetstream.WithPublishAsyncTimeout(cfg.PublishTimeout),
		jetstream.WithPublishAsyncAckHandler(r.onAck),
		jetstream.WithPublishAsyncErrHandler(r.onErr),
	)
	if err != nil {
		m.close()
		return nil, fmt.Errorf("relay jetstream: %w", err)
	}
	return r, nil
}

// ID returns the relay's id in the relays and lease tables.
func (r *Relay) ID() string { return r.cfg.ID }

// Start registers the relay, takes its first leases, creates or updates the
// stream (if NATS is reachable now; otherwise before the first publish) and
// starts working. It returns once the relay runs. ctx bounds only the start.
func (r *Relay) Start(ctx context.Context) error {
	select {
	case <-r.stopping:
		return ErrStopped
	default:
	}
	err := errors.New("relay: already started")
	r.startOnce.Do(func() { err = r.start(ctx) })
	return err
}

func (r *Relay) start(ctx context.Context) error {
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	if err := r.ensureStream(sctx); err != nil {
		r.log.Warn("stream not ready at start; will retry before publishing", slog.String("stream", r.cfg.Stream), slog.String("error", err.Error()))
	}
	cancel()

	r.hardCtx, r.hardStop = context.WithCancel(context.WithoutCancel(ctx))
	bgCtx, bgCancel := context.WithCancel(context.WithoutCancel(ctx))
	r.bgCancel = bgCancel
	leaseCtx, leaseCancel := context.WithCancel(r.hardCtx)

	r.tickLeases(ctx)
	// Listening before the worker's first claim: a change committed after
	// that claim read the outbox is announced.
	lctx, lcancel := context.WithTimeout(ctx, 5*time.Second)
	listenConn, err := r.listenConn(lctx)
	lcancel()
	if err != nil {
		r.log.Warn("outbox listener not connected; it retries, and the poll interval covers the gap", slog.String("error", err.Error()))
	}
	r.started.Store(true)

	go func() {
		defer close(r.leaseDone)
		r.leaseLoop(leaseCtx)
	}()
	go func() {
		defer close(r.workDone)
		defer leaseCancel() // the lease loop ends after the worker
		r.work()
	}()
	r.bg.Add(2)
	go func() { defer r.bg.Done(); r.listen(bgCtx, listenConn) }()
	go func() { defer r.bg.Done(); r.housekeep(bgCtx) }()
	r.log.Info("relay started", slog.Int("partitions", r.leases.count()), slog.String("stream", r.cfg.Stream))
	return nil
}

// ensureStream creates the stream, or brings an existing one to what the
// relay needs: subjects "{prefix}.>" and the configured duplicate window.
// Every other setting of an existing stream (limits, retention, storage,
// replicas, description) is the operator's and is kept.
func (r *Relay) ensureStream(ctx context.Context) error {
	err := r.syncStream(ctx)
	if err != nil {
		err = fmt.Errorf("stream %s: %w", r.cfg.Stream, err)
	}
	r.streamErr.Store(&streamState{err: err})
	r.streamReady.Store(err == nil)
	return err
}

type streamState struct{ err error }

func (r *Relay) syncStream(ctx context.Context) error {
	subject := r.cfg.SubjectPrefix + ".>"
	for attempt := 0; ; attempt++ {
		s, err := r.js.Stream(ctx, r.cfg.Stream)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			_, err = r.js.CreateStream(ctx, jetstream.StreamConfig{
				Name:       r.cfg.Stream,
				Subjects:   []string{subject},
				Duplicates: r.cfg.DuplicateWindow,
				Storage:    jetstream.FileStorage,
			})
			if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) && attempt == 0 {
				continue // another relay created it just now: check it
			}
			return err
		}
		if err != nil {
			return err
		}
		cfg := s.CachedInfo().Config
		covered := slices.Contains(cfg.Subjects, subject) || slices.Contains(cfg.Subjects, ">")
		if covered && cfg.Duplicates == r.cfg.DuplicateWindow {
			return nil
		}
		window := cfg.Duplicates
		if !covered {
			cfg.Subjects = append(cfg.Subjects, subject)
		}
		cfg.Duplicates = r.cfg.DuplicateWindow
		if _, err := r.js.UpdateStream(ctx, cfg); err != nil {
			if !covered {
				return err
			}
			// The stream takes the events; only its window stays (the
			// server refuses one longer than the stream's max age, say).
			r.log.Warn("the stream keeps its duplicate window", slog.String("stream", r.cfg.Stream),
				slog.Duration("window", window), slog.Duration("configured", r.cfg.DuplicateWindow), slog.String("error", err.Error()))
		}
		return nil
	}
}

// StreamError is why the stream is not ready to take events, or nil once
// the relay created or checked it.
func (r *Relay) StreamError() error {
	if st := r.streamErr.Load(); st != nil {
		return st.err
	}
	return errors.New("stream not checked yet")
}

func (r *Relay) leaseLoop(ctx context.Context) {
	t := time.NewTicker(r.cfg.LeaseTTL / 5)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.tickLeases(ctx)
		}
	}
}

// WakeHeld takes the outbox entries a writer in the same process has just
// committed, for the partitions it holds and may work now, and returns the
// others, which the writer announces with NOTIFY. cached says the writer saw
// the cache take every entry: those go to the worker to publish at once,
// with no claim and no read of the cache where the key's order allows
// (worker.onHandoff). Entries whose cache write did not succeed wake a
// claim of their partitions, which repairs them after the grace period. A
// partition it takes over later is read in full when it takes it.
func (r *Relay) WakeHeld(entries []*outbox.Entry, cached bool) (rest outbox.PartSet) {
	held := r.leases.workableSet()
	var mine outbox.PartSet
	var hand []*outbox.Claimed
	for _, e := range entries {
		if !held.Has(e.Partition) {
			rest = rest.With(e.Partition)
			continue
		}
		mine = mine.With(e.Partition)
		if cached {
			hand = append(hand, &outbox.Claimed{Entry: *e, PublishPending: true, CachePending: true, CacheHeld: true, Due: true})
		}
	}
	if len(hand) > 0 {
		// Noted first, so that a claim which brings one of them before
		// the worker takes it (a claim already running) still settles it
		// without reading the cache; handOff forgets the ones it queues.
		r.rememberHeld(hand)
		select {
		case r.handoff <- hand:
			return rest
		default: // the worker is behind: claim them
		}
	}
	if mine != 0 {
		r.wakeFor(mine)
	}
	return rest
}

// rememberHeld notes entries whose version the writer saw the cache take,
// so claiming them costs no read of the cache.
func (r *Relay) rememberHeld(cs []*outbox.Claimed) {
	r.heldMu.Lock()
	defer r.heldMu.Unlock()
	if len(r.heldSeqs)+len(cs) > maxHeldSeqs {
		// Entries never claimed here (their partition moved on) would stay
		// forever: start over; the cache read covers what is forgotten.
		clear(r.heldSeqs)
	}
	for _, c := range cs {
		r.heldSeqs[c.Seq] = struct{}{}
	}
}

// maxHeldSeqs bounds the entries WakeHeld remembers as cached.
const maxHeldSeqs = 1 << 16

// takeHeld reports whether a writer in this process saw the cache take
// entry seq, and forgets it.
func (r *Relay) takeHeld(seq int64) bool {
	r.heldMu.Lock()
	defer r.heldMu.Unlock()
	if _, ok := r.heldSeqs[seq]; ok {
		delete(r.heldSeqs, seq)
		return true
	}
	return false
}

// wakeup asks the worker to read every partition it holds.
func (r *Relay) wakeup() { r.wakeFor(outbox.AllParts) }

// wakeFor asks the worker to read the partitions in parts.
func (r *Relay) wakeFor(parts outbox.PartSet) {
	r.wakeParts.Or(uint64(parts))
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Stop ends the relay: it finishes the work in flight (its publishes are
// acknowledged and marked), releases the leases so other relays take over at
// once, and waits for every goroutine. If ctx ends first, work in progress is
// abandoned (its entries are worked again later; JetStream drops the
// duplicates). Stop is idempotent; later calls wait for the first.
func (r *Relay) Stop(ctx context.Context) error {
	first := false
	r.stopOnce.Do(func() { first = true; close(r.stopping) })
	if !first {
		select {
		case <-r.stopped:
			return r.stopErr
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	defer close(r.stopped)
	defer r.metrics.close()
	if !r.started.Load() {
		return nil
	}
	halt := context.AfterFunc(ctx, r.hardStop)
	defer halt()
	<-r.workDone
	<-r.leaseDone
	var errs []error
	if !r.killed.Load() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		errs = append(errs, r.releaseAll(rctx))
		errs = append(errs, unregister(rctx, r))
		cancel()
	}
	r.bgCancel()
	r.bg.Wait()
	r.hardStop()
	r.stopErr = errors.Join(errs...)
	if !r.killed.Load() {
		r.log.Info("relay stopped")
	}
	return r.stopErr
}

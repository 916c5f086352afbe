package writer

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"

	"github.com/writethrough/writethrough/internal/crashpoint"
	"github.com/writethrough/writethrough/internal/fence"
	"github.com/writethrough/writethrough/outbox"
)

// Config of a Writer. The zero value of each optional field means its default.
type Config struct {
	// Pool is the Postgres pool; its connections' search_path must name the
	// writethrough schema. Required.
	Pool *pgxpool.Pool
	// Fence writes the cache. Required.
	Fence *fence.Fence
	// CacheTimeout bounds the synchronous Redis write after a commit; past it
	// the write counts as pending. Default 200ms.
	CacheTimeout time.Duration
	// ReadTimeout bounds a Redis read before falling back to Postgres.
	// Default 200ms.
	ReadTimeout time.Duration
	// MaxAttempts is how often a transaction that hits a serialization
	// failure or deadlock is run in all. Default 5.
	MaxAttempts int
	// Logger; default slog.Default().
	Logger *slog.Logger
	// MeterProvider for metrics; default the global one.
	MeterProvider metric.MeterProvider
	// GroupSize is the most one-change writes (Put, Delete) that may share
	// one transaction when they arrive together (group commit; see
	// group.go). 1 commits each on its own. Default 32.
	GroupSize int
	// LocalRelay, when set, is a relay in the same process: after a
	// commit it is woken directly for the partitions it holds, and only
	// the others are announced to relays elsewhere with NOTIFY.
	LocalRelay LocalRelay
}

// LocalRelay is a relay running in the writer's process (*relay.Relay).
type LocalRelay interface {
	// WakeHeld is given the outbox entries a commit wrote (their Seq set)
	// once its cache write is done, and whether the cache took them all.
	// It takes those of the partitions it holds and returns the other
	// partitions. It must not keep or change the entries.
	WakeHeld(entries []*outbox.Entry, cached bool) (rest outbox.PartSet)
}

// CacheWrite is the result of the synchronous cache write.
type CacheWrite string

const (
	// CacheOK: every touched key holds the committed version or a newer one.
	CacheOK CacheWrite = "ok"
	// CachePending: committed and durable, but the Redis write failed or timed
	// out; the relay will repair it.
	CachePending CacheWrite = "pending"
)

// Change is one committed change to an entity.
type Change struct {
	Collection string
	ID         string
	Version    int64
	// Data is the JSON text exactly as Postgres prints it; nil when deleted.
	Data      json.RawMessage
	UpdatedAt time.Time
	Deleted   bool
	// Created is true when the change created or re-created the entity.
	Created bool
	// EventID is the ce-id of the change's event.
	EventID string
}

// Representation is the entity representation of the change (CONTRACT §3).
func (c *Change) Representation() []byte {
	return outbox.AppendEntity(nil, c.Collection, c.ID, c.Version, c.Data, outbox.FormatTime(c.UpdatedAt))
}

// Result of Do.
type Result struct {
	// Changes in the order they were made.
	Changes    []Change
	CacheWrite CacheWrite
}

// Writer commits entity changes and writes them through to the cache.
type Writer struct {
	pool         *pgxpool.Pool
	fence        *fence.Fence
	cacheTimeout time.Duration
	readTimeout  time.Duration
	maxAttempts  int
	log          *slog.Logger
	metrics      *metrics
	waker        *waker
	group        *committer
	closeOnce    sync.Once
}

// New returns a Writer. Close it to stop its goroutine.
func New(cfg Config) (*Writer, error) {
	if cfg.Pool == nil {
		return nil, errors.New("writer: Config.Pool is required")
	}
	if cfg.Fence == nil {
		return nil, errors.New("writer: Config.Fence is required")
	}
	if cfg.CacheTimeout < 0 || cfg.ReadTimeout < 0 || cfg.MaxAttempts < 0 || cfg.GroupSize < 0 {
		return nil, errors.New("writer: Config.CacheTimeout, ReadTimeout, MaxAttempts and GroupSize must not be negative")
	}
	m, err := newMetrics(cfg.MeterProvider)
	if err != nil {
		return nil, err
	}
	w := &Writer{
		pool:         cfg.Pool,
		fence:        cfg.Fence,
		cacheTimeout: cmp.Or(cfg.CacheTimeout, 200*time.Millisecond),
		readTimeout:  cmp.Or(cfg.ReadTimeout, 200*time.Millisecond),
		maxAttempts:  cmp.Or(cfg.MaxAttempts, 5),
		log:          cmp.Or(cfg.Logger, slog.Default()),
		metrics:      m,
	}
	w.waker = newWaker(cfg.Pool, w.log, cfg.LocalRelay)
	w.group = &committer{
		w: w, size: cmp.Or(cfg.GroupSize, 32), maxGroups: max(2, runtime.GOMAXPROCS(0)),
		stall: groupStall, inflight: map[groupKey]int{},
	}
	return w, nil
}

// Close stops the goroutine that wakes the relays after commits. It
// does not close the pool or the Redis client.
func (w *Writer) Close() {
	w.closeOnce.Do(w.waker.stop)
}

// Pool returns the Postgres pool.
func (w *Writer) Pool() *pgxpool.Pool { return w.pool }

// Fence returns the cache fence.
func (w *Writer) Fence() *fence.Fence { return w.fence }

// Tx is the transaction handed to Do's callback: the application's own SQL
// goes through Exec, Query and QueryRow, entity changes through Put, Patch
// and Delete. Commit and rollback belong to Do.
type Tx interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	// Put creates or replaces an entity with data, a JSON value.
	Put(ctx context.Context, collection, id string, data []byte, conds ...Condition) (Change, error)
	// Patch applies an RFC 7386 merge patch to a live entity.
	Patch(ctx context.Context, collection, id string, patch []byte, conds ...Condition) (Change, error)
	// Delete turns a live entity into a tombstone.
	Delete(ctx context.Context, collection, id string, conds ...Condition) (Change, error)
}

// Condition is a precondition on the entity's current state.
type Condition struct {
	kind    condKind
	version int64
}

type condKind int

const (
	condMatch condKind = iota + 1
	condExists
	condAbsent
)

// IfMatch requires the live entity to be at version v (If-Match: "v").
func IfMatch(v int64) Condition { return Condition{kind: condMatch, version: v} }

// IfExists requires a live entity (If-Match: *).
func IfExists() Condition { return Condition{kind: condExists} }

// IfAbsent requires no live entity (If-None-Match: *).
func IfAbsent() Condition { return Condition{kind: condAbsent} }

// Do runs fn in a transaction, commits it, and writes every touched key to the
// cache through the fence. fn may run more than once: a serialization failure
// or deadlock reruns it, up to Config.MaxAttempts in all, so it must not have
// effects outside the transaction.
func (w *Writer) Do(ctx context.Context, fn func(Tx) error) (Result, error) {
	start := time.Now()
	res, err := w.do(ctx, fn)
	w.metrics.recordWrite(ctx, start, res, err)
	return res, err
}

func (w *Writer) do(ctx context.Context, fn func(Tx) error) (Result, error) {
	return w.commitWith(ctx, func() (*txn, error) { return w.attempt(ctx, fn) })
}

// commitWith runs attempt, again after a serialization failure or deadlock,
// then writes the committed changes through to the cache and wakes the
// relays.
func (w *Writer) commitWith(ctx context.Context, attempt func() (*txn, error)) (Result, error) {
	var t *txn
	bo := backoff.WithContext(backoff.WithMaxRetries(&backoff.ExponentialBackOff{
		InitialInterval:     5 * time.Millisecond,
		RandomizationFactor: 0.5,
		Multiplier:          2,
		MaxInterval:         200 * time.Millisecond,
		MaxElapsedTime:      0,
		Stop:                backoff.Stop,
		Clock:               backoff.SystemClock,
	}, uint64(w.maxAttempts-1)), ctx)
	err := backoff.Retry(func() error {
		var err error
		t, err = attempt()
		if err != nil && !IsRetryable(err) {
			return backoff.Permanent(err)
		}
		return err
	}, bo)
	if err != nil {
		return Result{}, classify(err)
	}
	return Result{Changes: t.changes, CacheWrite: w.afterCommit(ctx, t)}, nil
}

// afterCommit writes the changes t committed through to the cache, then
// wakes the relays.
func (w *Writer) afterCommit(ctx context.Context, t *txn) CacheWrite {
	crashpoint.Hit("writer-after-commit")
	cw := w.writeCache(ctx, t)
	// Wake the relays once the cache write is done, so they usually find the
	// cache already holding the version and need no repair.
	if len(t.entries) > 0 {
		w.waker.poke(t.entries, cw == CacheOK)
	}
	crashpoint.Hit("writer-after-cache")
	return cw
}

func classify(err error) error {
	var ie *InvalidError
	switch {
	case errors.As(err, &ie), errors.Is(err, ErrNotFound), errors.Is(err, ErrPrecondition):
		return err
	case IsRetryable(err):
		return fmt.Errorf("%w: %w", ErrConflict, err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if de := dataError(err); de != nil {
		return de
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) || pgconn.SafeToRetry(err) || isConnErr(err) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	// An application error from fn: hand it back as it is.
	return err
}

func isConnErr(err error) bool {
	var ce *pgconn.ConnectError
	var ne net.Error
	// A connection reset or closed mid-transaction (even at COMMIT) is an
	// outage, not a server bug: 503, and the call may be retried.
	return errors.As(err, &ce) || pgconn.Timeout(err) || errors.Is(err, pgconn.ErrConnClosed) ||
		errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// attempt runs fn once in a transaction and commits it.
func (w *Writer) attempt(ctx context.Context, fn func(Tx) error) (*txn, error) {
	conn, err := w.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	t := &txn{conn: conn, w: w, traceparent: traceparent(ctx)}
	defer t.finish(ctx)
	if err := fn(t); err != nil {
		return nil, err
	}
	if err := t.commit(ctx); err != nil {
		return nil, err
	}
	return t, nil
}

func newEventID() uuid.UUID {
	id, err := uuid.NewV7()
	if err != nil {
		return uuid.New()
	}
	return id
}

func traceparent(ctx context.Context) propagation.MapCarrier {
	c := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, c)
	return c
}

// writeCache applies the last version of every touched key through the fence.
func (w *Writer) writeCache(ctx context.Context, t *txn) CacheWrite {
	if len(t.entries) == 0 {
		return CacheOK
	}
	last := make(map[[2]string]int, len(t.entries))
	var entries []fence.Entry
	for _, e := range t.entries {
		k := [2]string{e.Collection, e.EntityID}
		fe := fence.Entry{Collection: e.Collection, ID: e.EntityID, Version: e.Version, Data: e.Data, UpdatedAt: outbox.FormatTime(e.CommittedAt)}
		if i, ok := last[k]; ok {
			entries[i] = fe
			continue
		}
		last[k] = len(entries)
		entries = append(entries, fe)
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.cacheTimeout)
	defer cancel()
	outcomes, err := w.fence.Apply(cctx, entries...)
	w.metrics.recordCache(ctx, outcomes)
	if err != nil {
		w.log.LogAttrs(ctx, slog.LevelWarn, "cache write pending", slog.String("error", err.Error()))
		return CachePending
	}
	return CacheOK
}

// txn implements Tx on a pooled connection. It pipelines: BEGIN goes out
// with the first statement, and the outbox insert with the COMMIT, so a
// one-change write costs two round trips to Postgres instead of four.
type txn struct {
	conn        *pgxpool.Conn
	begun, done bool
	w           *Writer
	traceparent propagation.MapCarrier
	changes     []Change
	entries     []*outbox.Entry
}

// begin starts the transaction on its own when the first statement cannot
// carry it (the application's own SQL).
func (t *txn) begin(ctx context.Context) error {
	if t.begun {
		return nil
	}
	t.begun = true
	if _, err := t.conn.Exec(ctx, "begin"); err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	return nil
}

func (t *txn) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := t.begin(ctx); err != nil {
		return pgconn.CommandTag{}, err
	}
	return t.conn.Exec(ctx, sql, args...)
}

func (t *txn) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := t.begin(ctx); err != nil {
		return nil, err
	}
	return t.conn.Query(ctx, sql, args...)
}

func (t *txn) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := t.begin(ctx); err != nil {
		return errRow{err}
	}
	return t.conn.QueryRow(ctx, sql, args...)
}

// queryRow runs one of the writer's statements and scans its row, sending
// BEGIN in the same round trip when the transaction has not begun.
func (t *txn) queryRow(ctx context.Context, dest []any, sql string, args ...any) error {
	if t.begun {
		return t.conn.QueryRow(ctx, sql, args...).Scan(dest...)
	}
	t.begun = true
	b := &pgx.Batch{}
	b.Queue("begin")
	var scanErr error
	b.Queue(sql, args...).QueryRow(func(row pgx.Row) error {
		scanErr = row.Scan(dest...)
		if errors.Is(scanErr, pgx.ErrNoRows) {
			return nil // the caller's answer, not a batch failure
		}
		return scanErr
	})
	if err := t.conn.SendBatch(ctx, b).Close(); err != nil {
		return err
	}
	return scanErr
}

// commit sends the outbox entries and COMMIT in one round trip.
func (t *txn) commit(ctx context.Context) error {
	if !t.begun {
		return nil // nothing was done
	}
	b := &pgx.Batch{}
	if err := outbox.QueueInsert(b, t.entries); err != nil {
		return err
	}
	var tag pgconn.CommandTag
	b.Queue("commit").Exec(func(ct pgconn.CommandTag) error {
		tag = ct
		return nil
	})
	if err := t.conn.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	if tag.String() != "COMMIT" {
		// COMMIT of a transaction that had failed answers ROLLBACK.
		return fmt.Errorf("commit: %w", pgx.ErrTxCommitRollback)
	}
	t.done = true
	return nil
}

// finish rolls back what was not committed and returns the connection. A
// connection left inside a transaction (its rollback failed) is destroyed by
// the pool rather than reused.
func (t *txn) finish(ctx context.Context) {
	if t.begun && !t.done {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_, _ = t.conn.Exec(rctx, "rollback")
		cancel()
	}
	t.conn.Release()
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

func (t *txn) record(ch Change) Change {
	op := outbox.OpPut
	if ch.Deleted {
		op = outbox.OpDelete
	}
	e := &outbox.Entry{
		EventID: newEventID(), Collection: ch.Collection, EntityID: ch.ID, Op: op,
		Traceparent: t.traceparent["traceparent"], Tracestate: t.traceparent["tracestate"],
	}
	return t.add(ch, e)
}

// add keeps a committed change and its outbox entry e, which gets the
// change's version, data and time.
func (t *txn) add(ch Change, e *outbox.Entry) Change {
	e.Version, e.Data, e.CommittedAt = ch.Version, ch.Data, ch.UpdatedAt
	ch.EventID = e.EventID.String()
	t.entries = append(t.entries, e)
	t.changes = append(t.changes, ch)
	return ch
}

func checkConds(conds []Condition) (match *int64, exists, absent bool) {
	for _, c := range conds {
		switch c.kind {
		case condMatch:
			v := c.version
			match = &v
		case condExists:
			exists = true
		case condAbsent:
			absent = true
		}
	}
	return match, exists, absent
}

func validJSON(field string, data []byte) error {
	if !json.Valid(data) {
		return invalid(field, "not a JSON value")
	}
	return nil
}

func (t *txn) Put(ctx context.Context, collection, id string, data []byte, conds ...Condition) (Change, error) {
	c, err := planPut(collection, id, data, conds)
	if err != nil {
		return Change{}, err
	}
	ch := Change{Collection: collection, ID: id}
	var text string
	err = t.queryRow(ctx, []any{&ch.Version, &text, &ch.UpdatedAt, &ch.Created}, c.sql, c.args...)
	if err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return Change{}, c.noRows
		}
		return Change{}, fmt.Errorf("put %s/%s: %w", collection, id, err)
	}
	ch.Data = json.RawMessage(text)
	return t.record(ch), nil
}

func (t *txn) Patch(ctx context.Context, collection, id string, patch []byte, conds ...Condition) (Change, error) {
	if err := validateKey(collection, id); err != nil {
		return Change{}, err
	}
	if _, err := decodeJSON(patch); err != nil {
		return Change{}, invalid("merge patch", "%v", err)
	}
	match, _, absent := checkConds(conds)
	var cur int64
	var doc string
	err := t.queryRow(ctx, []any{&cur, &doc}, lockSQL, collection, id)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		if len(conds) > 0 && !absent {
			return Change{}, ErrPrecondition
		}
		return Change{}, ErrNotFound
	case err != nil:
		return Change{}, fmt.Errorf("patch %s/%s: %w", collection, id, err)
	case absent || (match != nil && *match != cur):
		return Change{}, ErrPrecondition
	}
	merged, err := MergePatch([]byte(doc), patch)
	if err != nil {
		return Change{}, err
	}
	ch := Change{Collection: collection, ID: id}
	var text string
	err = t.queryRow(ctx, []any{&ch.Version, &text, &ch.UpdatedAt, &ch.Created}, replaceSQL, collection, id, string(merged), cur)
	if err != nil {
		return Change{}, fmt.Errorf("patch %s/%s: %w", collection, id, err)
	}
	ch.Data = json.RawMessage(text)
	return t.record(ch), nil
}

func (t *txn) Delete(ctx context.Context, collection, id string, conds ...Condition) (Change, error) {
	c, err := planDelete(collection, id, conds)
	if err != nil {
		return Change{}, err
	}
	ch := Change{Collection: collection, ID: id, Deleted: true}
	err = t.queryRow(ctx, []any{&ch.Version, &ch.UpdatedAt}, c.sql, c.args...)
	if errors.Is(err, pgx.ErrNoRows) {
		return Change{}, c.noRows
	}
	if err != nil {
		return Change{}, fmt.Errorf("delete %s/%s: %w", collection, id, err)
	}
	return t.record(ch), nil
}

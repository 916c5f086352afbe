package writer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/writethrough/writethrough/outbox"
)

// Put creates or replaces one entity on its own, as Do with a single
// tx.Put would, with the same conditions and results; it costs one round
// trip to Postgres instead of two, because nothing of the application's
// runs between the change and the COMMIT. Puts and Deletes that arrive
// together may share a transaction (group.go); each keeps its own answer.
func (w *Writer) Put(ctx context.Context, collection, id string, data []byte, conds ...Condition) (Result, error) {
	start := time.Now()
	res, err := w.put(ctx, collection, id, data, conds)
	w.metrics.recordWrite(ctx, start, res, err)
	return res, err
}

// Delete deletes one entity on its own, as Do with a single tx.Delete
// would, in one round trip to Postgres.
func (w *Writer) Delete(ctx context.Context, collection, id string, conds ...Condition) (Result, error) {
	start := time.Now()
	res, err := w.delete(ctx, collection, id, conds)
	w.metrics.recordWrite(ctx, start, res, err)
	return res, err
}

func (w *Writer) put(ctx context.Context, collection, id string, data []byte, conds []Condition) (Result, error) {
	c, err := planPut(collection, id, data, conds)
	if err != nil {
		return Result{}, err
	}
	return w.group.write(ctx, collection, id, c)
}

func (w *Writer) delete(ctx context.Context, collection, id string, conds []Condition) (Result, error) {
	c, err := planDelete(collection, id, conds)
	if err != nil {
		return Result{}, err
	}
	return w.group.write(ctx, collection, id, c)
}

// planPut checks a put and picks its statement, for txn.Put and Writer.Put
// alike.
func planPut(collection, id string, data []byte, conds []Condition) (oneChange, error) {
	if err := validateKey(collection, id); err != nil {
		return oneChange{}, err
	}
	if err := validJSON("data", data); err != nil {
		return oneChange{}, err
	}
	match, exists, absent := checkConds(conds)
	if absent && (match != nil || exists) {
		return oneChange{}, ErrPrecondition
	}
	c := oneChange{op: outbox.OpPut, noRows: ErrPrecondition}
	switch {
	case absent:
		c.sql, c.args = putIfAbsentSQL, []any{collection, id, string(data)}
	case match != nil || exists:
		c.sql, c.args = replaceSQL, []any{collection, id, string(data), match}
	default:
		c.sql, c.args = putSQL, []any{collection, id, string(data)}
	}
	return c, nil
}

// planDelete checks a delete and picks its statement, for txn.Delete and
// Writer.Delete alike.
func planDelete(collection, id string, conds []Condition) (oneChange, error) {
	if err := validateKey(collection, id); err != nil {
		return oneChange{}, err
	}
	match, _, absent := checkConds(conds)
	if absent {
		// If-None-Match: * on a delete can only succeed on nothing to delete.
		return oneChange{}, ErrPrecondition
	}
	c := oneChange{op: outbox.OpDelete, sql: deleteSQL, args: []any{collection, id, match}, noRows: ErrNotFound}
	if len(conds) > 0 {
		c.noRows = ErrPrecondition
	}
	return c, nil
}

// oneChange is the statement of a one-change write: one of the entity
// statements of store.go, returning what txn.Put or txn.Delete scan.
type oneChange struct {
	op     outbox.Op
	sql    string
	args   []any
	noRows error // the answer when the statement changed no row
}

// commitOne commits a one-change write on its own transaction, again after
// a serialization failure or deadlock.
func (w *Writer) commitOne(ctx context.Context, collection, id string, c oneChange) (Result, error) {
	return w.commitWith(ctx, func() (*txn, error) { return w.attemptOne(ctx, collection, id, c) })
}

// attemptOne commits c as a group of one (attemptGroup): BEGIN, the change,
// its outbox entry (outboxOfChangeSQL) and COMMIT in one batch. A change
// that found no row to change commits an empty transaction,
// outboxOfChangeSQL having recorded nothing.
func (w *Writer) attemptOne(ctx context.Context, collection, id string, c oneChange) (*txn, error) {
	t, queued, err := w.attemptGroup(ctx, []*groupWrite{{ctx: ctx, key: groupKey{collection, id}, c: c}})
	if err != nil {
		return nil, fmt.Errorf("%s %s/%s: %w", c.op, collection, id, err)
	}
	ch, err := queued[0].outcome()
	if err != nil {
		return nil, err
	}
	t.add(ch, queued[0].entry)
	return t, nil
}

// queuedChange is a one-change write queued in a batch: the change and
// its outbox entry, and what they answer once the batch has run.
type queuedChange struct {
	c        oneChange
	ch       Change
	text     string
	entry    *outbox.Entry
	changed  bool
	recorded int
}

// queueChange queues c and its outbox entry (outboxOfChangeSQL) in b,
// inside the transaction b has begun.
func queueChange(b *pgx.Batch, collection, id string, c oneChange, tp map[string]string) *queuedChange {
	q := &queuedChange{c: c, ch: Change{Collection: collection, ID: id, Deleted: c.op == outbox.OpDelete}}
	q.entry = &outbox.Entry{
		EventID: newEventID(), Partition: outbox.PartitionOf(collection, id),
		Collection: collection, EntityID: id, Op: c.op,
		Traceparent: tp["traceparent"], Tracestate: tp["tracestate"],
	}
	dest := []any{&q.ch.Version, &q.text, &q.ch.UpdatedAt, &q.ch.Created}
	if q.ch.Deleted {
		dest = []any{&q.ch.Version, &q.ch.UpdatedAt}
	}
	b.Queue(c.sql, c.args...).QueryRow(func(row pgx.Row) error {
		err := row.Scan(dest...)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // commits nothing; answered by outcome
		}
		q.changed = err == nil
		return err
	})
	e := q.entry
	b.Queue(outboxOfChangeSQL, [16]byte(e.EventID), int32(e.Partition), string(c.op), nullable(e.Traceparent), nullable(e.Tracestate), collection, id).
		Query(func(rows pgx.Rows) error {
			_, err := pgx.ForEachRow(rows, []any{&e.Seq}, func() error { q.recorded++; return nil })
			return err
		})
	return q
}

// queueCommit queues COMMIT in b; the tag it answered is read once b has run.
func queueCommit(b *pgx.Batch) *pgconn.CommandTag {
	tag := new(pgconn.CommandTag)
	b.Queue("commit").Exec(func(ct pgconn.CommandTag) error {
		*tag = ct
		return nil
	})
	return tag
}

// outcome is the committed change, or the answer to a change that found no
// row to change.
func (q *queuedChange) outcome() (Change, error) {
	if !q.changed {
		return Change{}, q.c.noRows
	}
	if q.recorded != 1 {
		// Cannot happen while outboxOfChangeSQL's xmin test holds; were it ever to
		// fail, say so rather than claim the change reached the outbox.
		return Change{}, fmt.Errorf("%s %s/%s: committed without its outbox entry (recorded %d)", q.c.op, q.ch.Collection, q.ch.ID, q.recorded)
	}
	if !q.ch.Deleted {
		q.ch.Data = json.RawMessage(q.text)
	}
	return q.ch, nil
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

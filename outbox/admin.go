package outbox

// The on-call statements: status counts, dead letters, replay selection and
// manual pruning. They are issued by the `outbox ...` commands, never by the
// relay's hot path, and each runs as one short statement.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Counts are the outbox entries by state. An entry is due while its event is
// unpublished or its cache write unconfirmed, and it is not dead.
type Counts struct {
	// Pending: due and never attempted by a relay.
	Pending int64 `json:"pending"`
	// Retrying: due after at least one failed attempt.
	Retrying int64 `json:"retrying"`
	// Dead: the relay gave up publishing (dead letters).
	Dead int64 `json:"dead"`
	// Finished: published and cached; prune removes them after retention.
	Finished int64 `json:"finished"`
}

// PartitionStatus is the lag and owner of one partition.
type PartitionStatus struct {
	Part int `json:"part"`
	// Due is the number of due entries.
	Due int64 `json:"due"`
	// OldestDue is the commit time of the oldest due entry; zero when none.
	OldestDue time.Time `json:"oldest_due,omitzero"`
	// Owner is the relay holding the lease, "" when the lease expired.
	Owner      string    `json:"owner,omitempty"`
	Epoch      int64     `json:"epoch"`
	LeaseUntil time.Time `json:"lease_until,omitzero"`
}

// Relay is a relay process that heartbeats in the relays table.
type Relay struct {
	ID          string    `json:"id"`
	Hostname    string    `json:"hostname"`
	PID         int       `json:"pid"`
	StartedAt   time.Time `json:"started_at"`
	HeartbeatAt time.Time `json:"heartbeat_at"`
}

// Status is a snapshot of the outbox for on-call.
type Status struct {
	// Now is the database's clock when the snapshot was taken; ages are
	// measured against it.
	Now time.Time `json:"now"`
	Counts
	// OldestDue is the commit time of the oldest due entry; zero when none.
	OldestDue time.Time `json:"oldest_due,omitzero"`
	// Partitions lists every partition that has a lease row or due entries.
	Partitions []PartitionStatus `json:"partitions"`
	// Relays lists the relays whose heartbeat is recent.
	Relays []Relay `json:"relays"`
}

const countsSQL = `
SELECT
  count(*) FILTER (WHERE publish_state <> 'dead' AND (publish_state = 'pending' OR cache_state = 'pending') AND attempts = 0),
  count(*) FILTER (WHERE publish_state <> 'dead' AND (publish_state = 'pending' OR cache_state = 'pending') AND attempts > 0),
  count(*) FILTER (WHERE publish_state = 'dead'),
  count(*) FILTER (WHERE publish_state = 'done' AND cache_state = 'done'),
  min(committed_at) FILTER (WHERE publish_state <> 'dead' AND (publish_state = 'pending' OR cache_state = 'pending')),
  now()
FROM outbox`

const partitionsSQL = `
WITH due AS (
  SELECT part, count(*) AS n, min(committed_at) AS oldest
  FROM outbox
  WHERE (publish_state = 'pending' OR cache_state = 'pending') AND publish_state <> 'dead'
  GROUP BY part
)
SELECT coalesce(l.part, d.part), coalesce(d.n, 0), d.oldest,
       CASE WHEN l.lease_until > now() THEN coalesce(l.owner, '') ELSE '' END,
       coalesce(l.epoch, 0), CASE WHEN l.lease_until > now() THEN l.lease_until END
FROM leases l FULL JOIN due d ON d.part = l.part
ORDER BY 1`

const relaysSQL = `
SELECT id, hostname, pid, started_at, heartbeat_at
FROM relays WHERE heartbeat_at > now() - make_interval(secs => $1)
ORDER BY id`

// ReadStatus takes a status snapshot. Relays count as alive when they
// heartbeat within aliveWithin (default 15s).
func ReadStatus(ctx context.Context, db *pgxpool.Pool, aliveWithin time.Duration) (*Status, error) {
	st := &Status{Partitions: []PartitionStatus{}, Relays: []Relay{}}
	var oldest *time.Time
	err := db.QueryRow(ctx, countsSQL).Scan(&st.Pending, &st.Retrying, &st.Dead, &st.Finished, &oldest, &st.Now)
	if err != nil {
		return nil, fmt.Errorf("count outbox entries: %w", err)
	}
	if oldest != nil {
		st.OldestDue = *oldest
	}
	rows, err := db.Query(ctx, partitionsSQL)
	if err != nil {
		return nil, fmt.Errorf("read partition lag: %w", err)
	}
	var p PartitionStatus
	var pOldest, pUntil *time.Time
	_, err = pgx.ForEachRow(rows, []any{&p.Part, &p.Due, &pOldest, &p.Owner, &p.Epoch, &pUntil}, func() error {
		q := p
		if pOldest != nil {
			q.OldestDue = *pOldest
		}
		if pUntil != nil {
			q.LeaseUntil = *pUntil
		}
		st.Partitions = append(st.Partitions, q)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read partition lag: %w", err)
	}
	secs := cmp.Or(aliveWithin, 15*time.Second).Seconds()
	rows, err = db.Query(ctx, relaysSQL, secs)
	if err != nil {
		return nil, fmt.Errorf("read relays: %w", err)
	}
	st.Relays, err = pgx.CollectRows(rows, pgx.RowToStructByPos[Relay])
	if err != nil {
		return nil, fmt.Errorf("read relays: %w", err)
	}
	if st.Relays == nil {
		st.Relays = []Relay{}
	}
	return st, nil
}

// Filter selects entries for the dead-letter and replay commands. The zero
// value of a field means "any".
type Filter struct {
	Collection string
	// EntityID selects one key (with Collection).
	EntityID string
	// Since and Until bound the time: inclusive and exclusive. Dead-letter
	// filters apply them to the time an entry went dead, replay to the commit
	// time.
	Since, Until time.Time
	// Error selects dead letters whose last error contains this text, case
	// insensitively.
	Error string
}

func (f Filter) args() []any {
	var since, until *time.Time
	if !f.Since.IsZero() {
		since = &f.Since
	}
	if !f.Until.IsZero() {
		until = &f.Until
	}
	return []any{f.Collection, f.EntityID, since, until, f.Error}
}

// deadWhere selects dead letters by Filter.args ($1..$5).
const deadWhere = `
publish_state = 'dead'
AND ($1 = '' OR collection = $1)
AND ($2 = '' OR entity_id = $2)
AND ($3::timestamptz IS NULL OR dead_at >= $3)
AND ($4::timestamptz IS NULL OR dead_at < $4)
AND ($5 = '' OR strpos(lower(coalesce(last_error, '')), lower($5)) > 0)`

// DeadLetter is one dead outbox entry.
type DeadLetter struct {
	Seq         int64     `json:"seq"`
	EventID     uuid.UUID `json:"event_id"`
	Collection  string    `json:"collection"`
	EntityID    string    `json:"id"`
	Version     int64     `json:"version"`
	Op          Op        `json:"op"`
	CommittedAt time.Time `json:"committed_at"`
	Attempts    int       `json:"attempts"`
	LastError   string    `json:"last_error"`
	DeadAt      time.Time `json:"dead_at"`
}

const deadListSQL = `
SELECT seq, event_id, collection, entity_id, version, op, committed_at, attempts, coalesce(last_error, ''), coalesce(dead_at, committed_at)
FROM outbox WHERE ` + deadWhere + `
ORDER BY seq LIMIT $6`

// ListDead returns up to limit dead letters matching f, oldest first
// (limit <= 0: 1000).
func ListDead(ctx context.Context, db *pgxpool.Pool, f Filter, limit int) ([]DeadLetter, error) {
	if limit <= 0 {
		limit = 1000
	}
	rows, err := db.Query(ctx, deadListSQL, append(f.args(), limit)...)
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (DeadLetter, error) {
		var d DeadLetter
		var op string
		err := r.Scan(&d.Seq, &d.EventID, &d.Collection, &d.EntityID, &d.Version, &op, &d.CommittedAt, &d.Attempts, &d.LastError, &d.DeadAt)
		d.Op = Op(op)
		return d, err
	})
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	if out == nil {
		out = []DeadLetter{}
	}
	return out, nil
}

// CountDead returns how many dead letters match f.
func CountDead(ctx context.Context, db *pgxpool.Pool, f Filter) (int64, error) {
	var n int64
	if err := db.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE `+deadWhere, f.args()...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count dead letters: %w", err)
	}
	return n, nil
}

// retryDeadSQL puts dead letters back in line. The relay works a key's
// entries in seq order, so the retried entries go out in their original
// per-key order; last_error is kept for the record.
const retryDeadSQL = `
UPDATE outbox SET publish_state = 'pending', attempts = 0, next_attempt_at = now(), dead_at = NULL
WHERE ` + deadWhere

// RetryDead sends the dead letters matching f back to the relay and returns
// how many it queued.
func RetryDead(ctx context.Context, db *pgxpool.Pool, f Filter) (int64, error) {
	tag, err := db.Exec(ctx, retryDeadSQL, f.args()...)
	if err != nil {
		return 0, fmt.Errorf("retry dead letters: %w", err)
	}
	return tag.RowsAffected(), nil
}

// replayWhere selects entries by Filter.args()[:4] ($1..$4) on the commit
// time. No index serves it (the outbox keeps only the indexes the relay
// needs): a replay reads the outbox once, in seq order, batch after batch.
const replayWhere = `
($1 = '' OR collection = $1)
AND ($2 = '' OR entity_id = $2)
AND ($3::timestamptz IS NULL OR committed_at >= $3)
AND ($4::timestamptz IS NULL OR committed_at < $4)`

const replaySelectSQL = `
SELECT seq, event_id, part, collection, entity_id, version, op, data::text, committed_at, coalesce(traceparent, ''), coalesce(tracestate, '')
FROM outbox WHERE ` + replayWhere + ` AND seq > $5
ORDER BY seq LIMIT $6`

// CountReplay returns how many entries a replay of f selects.
func CountReplay(ctx context.Context, db *pgxpool.Pool, f Filter) (int64, error) {
	var n int64
	if err := db.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE `+replayWhere, f.args()[:4]...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count replay entries: %w", err)
	}
	return n, nil
}

// ReplayBatch returns up to limit entries matching f (on commit time) with a
// seq above after, in seq order, so a key's entries come in version order.
// Pass the last Seq returned as the next after; an empty batch is the end.
func ReplayBatch(ctx context.Context, db *pgxpool.Pool, f Filter, after int64, limit int) ([]*Entry, error) {
	rows, err := db.Query(ctx, replaySelectSQL, append(f.args()[:4], after, cmp.Or(limit, 500))...)
	if err != nil {
		return nil, fmt.Errorf("select replay entries: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (*Entry, error) {
		e := &Entry{}
		var op string
		var data *string
		err := r.Scan(&e.Seq, &e.EventID, &e.Partition, &e.Collection, &e.EntityID, &e.Version, &op, &data, &e.CommittedAt, &e.Traceparent, &e.Tracestate)
		e.Op = Op(op)
		if data != nil {
			e.Data = []byte(*data)
		}
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("select replay entries: %w", err)
	}
	return out, nil
}

// The outbox has no index on commit time: every mark of an entry rewrites
// its row in each index, and one on committed_at cost the relay about a
// tenth of its drain rate. A prune walks the primary key instead, in seq
// order, through the entries committed before the cutoff, and stops at the
// first entry committed at or after it. An entry's commit time is its
// transaction's start, before its seq was drawn, so the walk misses only
// entries of transactions that were still running when a later entry's
// was committed past the cutoff; the next prune, with a later cutoff, takes
// them, late by at most how long their transaction ran.
//
// Each batch is one statement over at most $2 entries after seq $1: scan
// is the batch, head its part before the first entry committed at or after
// $3, and the head's finished entries are deleted (or counted, for a dry
// run). It returns their number, the head's last seq and whether the walk
// goes on.
const pruneWalkSQL = `
WITH scan AS (
    SELECT seq, committed_at, publish_state = 'done' AND cache_state = 'done' AS finished
    FROM outbox WHERE seq > $1 ORDER BY seq LIMIT $2
), head AS (
    SELECT seq, finished FROM scan
    WHERE seq < coalesce((SELECT min(seq) FROM scan WHERE committed_at >= $3), 9223372036854775807)
), %s
SELECT (SELECT count(*) FROM done), coalesce((SELECT max(seq) FROM head), $1),
       (SELECT count(*) FROM head) = $2`

var (
	pruneFinishedSQL = fmt.Sprintf(pruneWalkSQL, `done AS (
    DELETE FROM outbox o USING head h
    WHERE o.seq = h.seq AND h.finished AND o.publish_state = 'done' AND o.cache_state = 'done'
    RETURNING o.seq)`)
	countFinishedSQL = fmt.Sprintf(pruneWalkSQL, `done AS (SELECT seq FROM head WHERE finished)`)
)

// walkFinished runs sql (pruneFinishedSQL or countFinishedSQL) batch by
// batch through the entries committed before cutoff and returns the total
// of the finished entries it deleted or counted.
func walkFinished(ctx context.Context, db *pgxpool.Pool, sql string, cutoff time.Time, batch int, progress func(n int64)) (int64, error) {
	var total, after int64
	for {
		var n int64
		var more bool
		if err := db.QueryRow(ctx, sql, after, batch, cutoff).Scan(&n, &after, &more); err != nil {
			return total, err
		}
		total += n
		if progress != nil {
			progress(total)
		}
		if !more {
			return total, nil
		}
	}
}

// CountFinished returns how many finished entries were committed before
// cutoff: what a prune would delete, found by the same walk.
func CountFinished(ctx context.Context, db *pgxpool.Pool, cutoff time.Time) (int64, error) {
	n, err := walkFinished(ctx, db, countFinishedSQL, cutoff, 10000, nil)
	if err != nil {
		return 0, fmt.Errorf("count finished entries: %w", err)
	}
	return n, nil
}

// PruneFinished deletes finished entries committed before cutoff, walking
// batch entries (default 1000) per statement so none holds many row locks
// or runs long, and returns how many it deleted. progress, when set, is
// called after every batch.
func PruneFinished(ctx context.Context, db *pgxpool.Pool, cutoff time.Time, batch int, progress func(deleted int64)) (int64, error) {
	batch = cmp.Or(batch, 1000)
	if batch < 0 {
		return 0, errors.New("prune: batch must be positive")
	}
	n, err := walkFinished(ctx, db, pruneFinishedSQL, cutoff, batch, progress)
	if err != nil {
		return n, fmt.Errorf("prune finished entries: %w", err)
	}
	return n, nil
}

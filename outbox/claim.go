package outbox

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DB is what the relay's statements run on: a pool, a connection or a
// transaction.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Claimed is an entry selected for work, with its state.
type Claimed struct {
	Entry
	// PublishPending: the event still needs publishing.
	PublishPending bool
	// CachePending: nothing has recorded yet that the cache holds this
	// version.
	CachePending bool
	// RepairDue: the cache write of this change is not known to have
	// succeeded and the repair grace has passed.
	RepairDue bool
	// CacheHeld is set by the relay when it saw the cache hold this version
	// or a newer one, so marking the event published also settles its cache
	// state and no repair is needed.
	CacheHeld bool
	// Due: next_attempt_at has come; false for an entry that waits for a
	// retry (its key is parked until then).
	Due bool
	// DueIn is how long until next_attempt_at, by the database's clock
	// (zero or negative when Due).
	DueIn    time.Duration
	Attempts int
}

// claimSQL selects, per partition, the oldest entries that need work, by
// state and in seq order (never by "last seq seen": seqs are not in commit
// order across keys). Each partition is an index scan of outbox_due with its
// own limit. An entry whose cache write is still within the grace period and
// whose event is published needs nothing yet and is left out, and so are the
// entries the caller is already working ($4, a hashed set): the limit counts
// only new work, and late commits below them are still found.
const claimSQL = `
SELECT o.seq, o.event_id, o.part, o.collection, o.entity_id, o.version, o.op = 'delete', o.data::text,
       o.committed_at, coalesce(o.traceparent, ''), coalesce(o.tracestate, ''),
       o.publish_state = 'pending', o.cache_state = 'pending', o.cache_state = 'pending' AND o.committed_at < now() - $3 * interval '1 microsecond',
       o.next_attempt_at <= now(), (extract(epoch FROM o.next_attempt_at - now()) * 1000000)::bigint, o.attempts
FROM unnest($1::int[]) AS p(part)
CROSS JOIN LATERAL (
    SELECT * FROM outbox
    WHERE part = p.part
      AND (publish_state = 'pending' OR (cache_state = 'pending' AND committed_at < now() - $3 * interval '1 microsecond'))
      AND seq NOT IN (SELECT unnest($4::bigint[]))
    ORDER BY seq
    LIMIT $2
) o`

// Claim reads up to perPart entries needing work from each partition in
// parts, ordered by partition then seq, leaving out the entries of exclude
// (those the caller is working already). It is one statement: no
// transaction stays open while the caller works the entries. Ownership of
// the partitions (the leases) is what keeps other relays off them.
func Claim(ctx context.Context, db DB, parts []int32, perPart int, repairGrace time.Duration, exclude []int64) ([]*Claimed, error) {
	if exclude == nil {
		exclude = []int64{}
	}
	rows, err := db.Query(ctx, claimSQL, parts, perPart, repairGrace.Microseconds(), exclude)
	if err != nil {
		return nil, fmt.Errorf("claim outbox entries: %w", err)
	}
	defer rows.Close()
	var out []*Claimed
	for rows.Next() {
		c := &Claimed{}
		var deleted bool
		var part int32
		var dueInUS int64
		// The data scans into c.Data ([]byte) directly, nil for NULL: one
		// copy of the bytes the claim received.
		if err := rows.Scan(&c.Seq, (*[16]byte)(&c.EventID), &part, &c.Collection, &c.EntityID, &c.Version, &deleted, &c.Data,
			&c.CommittedAt, &c.Traceparent, &c.Tracestate, &c.PublishPending, &c.CachePending, &c.RepairDue, &c.Due, &dueInUS, &c.Attempts); err != nil {
			return nil, fmt.Errorf("claim outbox entries: %w", err)
		}
		c.Partition, c.Op = int(part), OpPut
		if deleted {
			c.Op = OpDelete
		}
		c.DueIn = time.Duration(dueInUS) * time.Microsecond
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("claim outbox entries: %w", err)
	}
	return out, nil
}

// Row is an entity's current row, what a cache repair writes.
type Row struct {
	Collection string
	ID         string
	Version    int64
	Data       []byte // nil for a tombstone
	UpdatedAt  time.Time
}

const currentRowsSQL = `
SELECT e.collection, e.id, e.version, e.data::text, e.updated_at
FROM unnest($1::text[], $2::text[]) AS k(collection, id)
JOIN entities e ON e.collection = k.collection AND e.id = k.id`

// CurrentRows reads the current rows of the given keys (collections[i],
// ids[i]). A key without a row is left out.
func CurrentRows(ctx context.Context, db DB, collections, ids []string) ([]Row, error) {
	rows, err := db.Query(ctx, currentRowsSQL, collections, ids)
	if err != nil {
		return nil, fmt.Errorf("read current rows: %w", err)
	}
	defer rows.Close()
	var out []Row
	for rows.Next() {
		var r Row
		var data *string
		if err := rows.Scan(&r.Collection, &r.ID, &r.Version, &data, &r.UpdatedAt); err != nil {
			return nil, fmt.Errorf("read current rows: %w", err)
		}
		if data != nil {
			r.Data = []byte(*data)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read current rows: %w", err)
	}
	return out, nil
}

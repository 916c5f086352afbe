package writer

// The entity SQL of the writer. Every statement that changes an entity bumps
// its version under the row lock it takes (INSERT ... ON CONFLICT and UPDATE
// lock the row), and stamps updated_at after the lock is held, never earlier
// than the previous change of the key, so ce-time follows version order.

const nextStamp = `greatest(clock_timestamp(), e.updated_at + interval '1 microsecond')`

// putSQL creates, re-creates or replaces an entity.
const putSQL = `
INSERT INTO entities AS e (collection, id, version, data, deleted, created, updated_at)
VALUES ($1, $2, 1, $3, false, true, clock_timestamp())
ON CONFLICT (collection, id) DO UPDATE
SET version = e.version + 1, data = excluded.data, deleted = false, created = e.deleted,
    updated_at = ` + nextStamp + `
RETURNING version, data::text, updated_at, created`

// putIfAbsentSQL is putSQL for If-None-Match: *: it changes only a missing or
// deleted entity.
const putIfAbsentSQL = `
INSERT INTO entities AS e (collection, id, version, data, deleted, created, updated_at)
VALUES ($1, $2, 1, $3, false, true, clock_timestamp())
ON CONFLICT (collection, id) DO UPDATE
SET version = e.version + 1, data = excluded.data, deleted = false, created = true,
    updated_at = ` + nextStamp + `
WHERE e.deleted
RETURNING version, data::text, updated_at, created`

// replaceSQL replaces an existing entity, optionally only at version $4.
const replaceSQL = `
UPDATE entities AS e
SET version = e.version + 1, data = $3, deleted = false, created = false,
    updated_at = ` + nextStamp + `
WHERE collection = $1 AND id = $2 AND NOT deleted AND ($4::bigint IS NULL OR version = $4)
RETURNING version, data::text, updated_at, created`

// lockSQL reads a live entity under its row lock (for PATCH).
const lockSQL = `
SELECT version, data::text FROM entities
WHERE collection = $1 AND id = $2 AND NOT deleted
FOR UPDATE`

// deleteSQL turns a live entity into a tombstone, optionally only at version $3.
const deleteSQL = `
UPDATE entities AS e
SET version = e.version + 1, data = NULL, deleted = true, created = false,
    updated_at = ` + nextStamp + `
WHERE collection = $1 AND id = $2 AND NOT deleted AND ($3::bigint IS NULL OR version = $3)
RETURNING version, updated_at`

// getSQL reads an entity, tombstones included.
const getSQL = `
SELECT version, data::text, updated_at FROM entities
WHERE collection = $1 AND id = $2`

// outboxOfChangeSQL is the outbox entry of a change made by putSQL, putIfAbsentSQL,
// replaceSQL or deleteSQL earlier in the same transaction, taken from the
// entity row that change wrote. The row's xmin is the transaction's own id
// exactly when that statement changed it, so a statement that changed
// nothing (a failed precondition) records nothing. This lets a one-change
// write send BEGIN, its change, this and COMMIT in one round trip.
const outboxOfChangeSQL = `
INSERT INTO outbox (event_id, part, collection, entity_id, version, op, data, committed_at, traceparent, tracestate)
SELECT $1, $2, e.collection, e.id, e.version, $3, e.data::json, e.updated_at, $4, $5
FROM entities AS e
WHERE e.collection = $6 AND e.id = $7 AND e.xmin = pg_current_xact_id()::xid
RETURNING seq`

-- +goose Up
-- Every table lives in the schema named by WT_DB_SCHEMA; the migrator sets
-- search_path to it, so nothing here names a schema.

-- entities holds the source of truth. version grows by exactly one per change
-- and is bumped under the row lock; a deleted entity is a tombstone row that
-- keeps its version so a re-created entity continues the sequence.
CREATE TABLE entities (
    collection text        NOT NULL,
    id         text        NOT NULL,
    version    bigint      NOT NULL CHECK (version > 0),
    data       jsonb,
    deleted    boolean     NOT NULL DEFAULT false,
    -- created is true when the last change created or re-created the entity.
    created    boolean     NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (collection, id),
    CHECK (deleted = (data IS NULL))
);

-- outbox holds one entry per committed change. seq orders entries of one key
-- (versions of a key are inserted under its row lock, so seq follows version
-- per key); it is never used as a "last seen" offset across keys.
CREATE TABLE outbox (
    seq            bigserial   PRIMARY KEY,
    event_id       uuid        NOT NULL UNIQUE,
    part           integer     NOT NULL,
    collection     text        NOT NULL,
    entity_id      text        NOT NULL,
    version        bigint      NOT NULL,
    op             text        NOT NULL CHECK (op IN ('put', 'delete')),
    data           jsonb,
    committed_at   timestamptz NOT NULL,
    traceparent    text,
    tracestate     text,
    -- cache_state: 'pending' until the synchronous write or a repair put this
    -- version (or a newer one) in Redis.
    cache_state    text        NOT NULL DEFAULT 'pending' CHECK (cache_state IN ('pending', 'done')),
    -- publish_state: 'pending' until JetStream acknowledged the event; 'dead'
    -- after the relay gave up on it.
    publish_state  text        NOT NULL DEFAULT 'pending' CHECK (publish_state IN ('pending', 'done', 'dead')),
    attempts       integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error     text,
    published_at   timestamptz,
    dead_at        timestamptz
);
CREATE INDEX outbox_due ON outbox (part, seq) WHERE publish_state = 'pending' OR cache_state = 'pending';
CREATE INDEX outbox_key ON outbox (collection, entity_id, seq);
CREATE INDEX outbox_committed ON outbox (committed_at);
CREATE INDEX outbox_dead ON outbox (dead_at) WHERE publish_state = 'dead';

-- A commit wakes the relays through LISTEN/NOTIFY on "<schema>_outbox"; one
-- notification per statement, folded per transaction by Postgres.
-- +goose StatementBegin
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_outbox', '');
    RETURN NULL;
END $$;
-- +goose StatementEnd
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- idempotency stores the answers behind Idempotency-Key for 24 h.
CREATE TABLE idempotency (
    key          text        PRIMARY KEY,
    method       text        NOT NULL,
    target       text        NOT NULL,
    body_hash    bytea       NOT NULL,
    state        text        NOT NULL DEFAULT 'inflight' CHECK (state IN ('inflight', 'done')),
    status       integer,
    headers      jsonb,
    body         bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX idempotency_expires ON idempotency (expires_at);

-- +goose Down
DROP TABLE idempotency;
DROP TRIGGER outbox_notify ON outbox;
DROP FUNCTION outbox_notify();
DROP TABLE outbox;
DROP TABLE entities;

-- +goose Up
-- Relays lease partitions of the key space (outbox.part) to keep per-key
-- order with any number of relays: one owner per partition at a time.

-- relays lists the relay processes seen alive (heartbeat).
CREATE TABLE relays (
    id           text        PRIMARY KEY,
    hostname     text        NOT NULL DEFAULT '',
    pid          integer     NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- leases: one row per partition. epoch grows with every change of owner and
-- fences a relay that lost its lease out of marking entries.
CREATE TABLE leases (
    part        integer     PRIMARY KEY,
    owner       text,
    epoch       bigint      NOT NULL DEFAULT 0,
    lease_until timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO leases (part) SELECT generate_series(0, 63);

-- lease_log records every lease a relay held, so tests and on-call can check
-- that no two relays owned a partition at once.
CREATE TABLE lease_log (
    part        integer     NOT NULL,
    epoch       bigint      NOT NULL,
    owner       text        NOT NULL,
    acquired_at timestamptz NOT NULL,
    released_at timestamptz,
    PRIMARY KEY (part, epoch)
);

-- +goose Down
DROP TABLE lease_log;
DROP TABLE leases;
DROP TABLE relays;

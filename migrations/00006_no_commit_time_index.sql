-- +goose Up
-- Marking an entry published rewrites its row in every index of the outbox;
-- the commit-time index cost the relay about a tenth of its drain rate and
-- every write an index insert. Prune walks the primary key instead, and a
-- replay by time range reads the outbox once in seq order.
DROP INDEX outbox_committed;

-- +goose Down
CREATE INDEX outbox_committed ON outbox (committed_at);

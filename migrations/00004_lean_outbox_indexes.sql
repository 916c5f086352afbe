-- +goose Up
-- Every change of an entry's state rewrites its row in every index of the
-- outbox (the due index's predicate names the state columns, so the update
-- is never HOT). Keep only the indexes a statement of ours uses: event ids
-- are UUIDv7, unique without an index, and nothing looks entries up by key
-- through an index.
ALTER TABLE outbox DROP CONSTRAINT outbox_event_id_key;
DROP INDEX outbox_key;

-- +goose Down
CREATE INDEX outbox_key ON outbox (collection, entity_id, seq);
ALTER TABLE outbox ADD CONSTRAINT outbox_event_id_key UNIQUE (event_id);

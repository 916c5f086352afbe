-- +goose Up
-- The writer wakes the relays with a NOTIFY after its commit instead of from
-- a trigger inside the transaction: an in-transaction NOTIFY holds Postgres's
-- global notify lock through the commit and serializes every writer's WAL
-- flush. The relays' poll interval covers a wake-up lost to a crash.
DROP TRIGGER outbox_notify ON outbox;
DROP FUNCTION outbox_notify();

-- +goose Down
-- +goose StatementBegin
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_outbox', '');
    RETURN NULL;
END $$;
-- +goose StatementEnd
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

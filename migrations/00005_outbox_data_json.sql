-- +goose Up
-- An entry's data is written once, as the entity row's JSON text, and only
-- ever read back as text for its event. Stored as json, the text is kept
-- as written: no binary form to build on insert, none to print again on
-- every claim.
ALTER TABLE outbox ALTER COLUMN data TYPE json USING data::json;

-- +goose Down
ALTER TABLE outbox ALTER COLUMN data TYPE jsonb USING data::jsonb;

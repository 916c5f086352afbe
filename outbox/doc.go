// Package outbox is the only package that writes outbox SQL. It owns the
// outbox entry (one per committed change), the partition a key hashes to, the
// insert the writer issues inside its transaction, and the statements the
// relay and the on-call commands use to claim, mark, dead-letter, replay and
// prune entries. It does not talk to Redis or NATS.
package outbox

package outbox

import (
	"context"
	"fmt"
	"time"
)

const markPublishedSQL = heldCTE + `
UPDATE outbox SET publish_state = 'done', published_at = now(), last_error = NULL
WHERE seq = ANY($4::bigint[]) AND publish_state = 'pending' AND part IN (SELECT part FROM held)`

// MarkPublished records that JetStream acknowledged the events of seqs, in
// one statement, for entries of partitions h still holds. It returns how
// many entries it marked.
func MarkPublished(ctx context.Context, db DB, h Held, seqs []int64) (int64, error) {
	if len(seqs) == 0 {
		return 0, nil
	}
	tag, err := db.Exec(ctx, markPublishedSQL, h.Owner, h.Parts, h.Epochs, seqs)
	if err != nil {
		return 0, fmt.Errorf("mark published: %w", err)
	}
	return tag.RowsAffected(), nil
}

const markRepairedSQL = heldCTE + `
UPDATE outbox o SET cache_state = 'done'
FROM unnest($4::text[], $5::text[], $6::bigint[]) AS r(collection, entity_id, version)
WHERE o.collection = r.collection AND o.entity_id = r.entity_id AND o.version <= r.version
  AND o.cache_state = 'pending' AND o.part IN (SELECT part FROM held)`

// Repaired is a key whose cache now holds Version or newer.
type Repaired struct {
	Collection string
	ID         string
	Version    int64
}

// MarkRepaired records that the cache holds at least the given version of
// each key: every pending cache write of the key up to that version is done.
func MarkRepaired(ctx context.Context, db DB, h Held, keys []Repaired) (int64, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	cols, ids, vers := make([]string, len(keys)), make([]string, len(keys)), make([]int64, len(keys))
	for i, k := range keys {
		cols[i], ids[i], vers[i] = k.Collection, k.ID, k.Version
	}
	tag, err := db.Exec(ctx, markRepairedSQL, h.Owner, h.Parts, h.Epochs, cols, ids, vers)
	if err != nil {
		return 0, fmt.Errorf("mark cache repaired: %w", err)
	}
	return tag.RowsAffected(), nil
}

// Failure is one failed publish attempt.
type Failure struct {
	Seq int64
	Err string
	// Retry is when to try again; ignored when Dead.
	Retry time.Duration
	// Dead turns the entry into a dead letter: the key moves on.
	Dead bool
}

const markFailedSQL = heldCTE + `
UPDATE outbox o SET attempts = o.attempts + 1, last_error = f.err,
    next_attempt_at = now() + f.retry_us * interval '1 microsecond',
    publish_state = CASE WHEN f.dead THEN 'dead' ELSE o.publish_state END,
    dead_at = CASE WHEN f.dead THEN now() ELSE o.dead_at END
FROM unnest($4::bigint[], $5::text[], $6::bigint[], $7::bool[]) AS f(seq, err, retry_us, dead)
WHERE o.seq = f.seq AND o.publish_state = 'pending' AND o.part IN (SELECT part FROM held)`

// MarkFailed counts one failed attempt for each entry and schedules its
// retry, or makes it a dead letter.
func MarkFailed(ctx context.Context, db DB, h Held, fs []Failure) (int64, error) {
	if len(fs) == 0 {
		return 0, nil
	}
	seqs, errs, retries, dead := make([]int64, len(fs)), make([]string, len(fs)), make([]int64, len(fs)), make([]bool, len(fs))
	for i, f := range fs {
		seqs[i], errs[i], retries[i], dead[i] = f.Seq, f.Err, f.Retry.Microseconds(), f.Dead
	}
	tag, err := db.Exec(ctx, markFailedSQL, h.Owner, h.Parts, h.Epochs, seqs, errs, retries, dead)
	if err != nil {
		return 0, fmt.Errorf("mark publish failures: %w", err)
	}
	return tag.RowsAffected(), nil
}

package outbox

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"
)

// heldParts is the condition of every mark: the entry's partition, as the
// caller passed it, is one the caller still holds (heldCTE), and it is the
// entry's. The lease rows are read and locked once per statement, not
// joined per entry. The check is on the passed partition, not on o.part:
// a condition on o.part alone lets the planner read every due entry of the
// held partitions and hash them, instead of one primary key lookup per
// marked entry.
const heldParts = `m.part = ANY(ARRAY(SELECT part FROM held)) AND o.part = m.part`

// markDoneSQL records, in one statement, the acknowledged events and the
// repaired cache writes of a batch. The entries are visited in the order of
// $4 (ascending seq), the order every other marking statement locks rows in.
//
// Its commit does not wait for the WAL flush (synchronous_commit is off for
// this statement's transaction alone): were Postgres to crash and lose the
// last marks, those entries are due again and are published again with
// their Nats-Msg-Id, which JetStream drops within its duplicate window, as
// after a relay crash between publish and mark. Marks are committed in the
// order they are made, so what survives is always a prefix of them.
const markDoneSQL = heldCTE + `, async AS (SELECT set_config('synchronous_commit', 'off', true) AS off)
UPDATE outbox o SET
    publish_state = CASE WHEN m.pub AND o.publish_state = 'pending' THEN 'done' ELSE o.publish_state END,
    published_at  = CASE WHEN m.pub AND o.publish_state = 'pending' THEN now() ELSE o.published_at END,
    last_error    = CASE WHEN m.pub AND o.publish_state = 'pending' THEN NULL ELSE o.last_error END,
    cache_state   = CASE WHEN m.cache THEN 'done' ELSE o.cache_state END
FROM unnest($4::bigint[], $5::bool[], $6::bool[], $7::int[]) AS m(seq, pub, cache, part)
WHERE o.seq = m.seq AND (SELECT off FROM async) = 'off' AND ` + heldParts + `
  AND ((m.pub AND o.publish_state = 'pending') OR (m.cache AND o.cache_state = 'pending'))`

// Done is what a relay finished for one entry: its event was acknowledged
// (Published), its cache write was repaired (Cached), or both.
type Done struct {
	Seq       int64
	Part      int32
	Published bool
	Cached    bool
}

// MarkDone records a batch of finished work in one statement, for entries
// of partitions h still holds. A repaired entry is one whose key's cache
// now holds its version or a newer one. It returns how many entries it
// changed.
func MarkDone(ctx context.Context, db DB, h Held, done []Done) (int64, error) {
	if len(done) == 0 {
		return 0, nil
	}
	done = slices.Clone(done)
	slices.SortFunc(done, func(a, b Done) int { return cmp.Compare(a.Seq, b.Seq) })
	seqs, pub, cache, parts := make([]int64, len(done)), make([]bool, len(done)), make([]bool, len(done)), make([]int32, len(done))
	for i, d := range done {
		seqs[i], pub[i], cache[i], parts[i] = d.Seq, d.Published, d.Cached, d.Part
	}
	tag, err := db.Exec(ctx, markDoneSQL, h.Owner, h.Parts, h.Epochs, seqs, pub, cache, parts)
	if err != nil {
		return 0, fmt.Errorf("mark outbox entries done: %w", err)
	}
	return tag.RowsAffected(), nil
}

// Failure is one failed publish attempt.
type Failure struct {
	Seq  int64
	Part int32
	Err  string
	// Retry is when to try again; ignored when Dead.
	Retry time.Duration
	// Dead turns the entry into a dead letter: the key moves on.
	Dead bool
}

const markFailedSQL = heldCTE + `
UPDATE outbox o SET attempts = o.attempts + 1, last_error = m.err,
    next_attempt_at = now() + m.retry_us * interval '1 microsecond',
    publish_state = CASE WHEN m.dead THEN 'dead' ELSE o.publish_state END,
    dead_at = CASE WHEN m.dead THEN now() ELSE o.dead_at END
FROM unnest($4::bigint[], $5::text[], $6::bigint[], $7::bool[], $8::int[]) AS m(seq, err, retry_us, dead, part)
WHERE o.seq = m.seq AND o.publish_state = 'pending' AND ` + heldParts

// MarkFailed counts one failed attempt for each entry and schedules its
// retry, or makes it a dead letter.
func MarkFailed(ctx context.Context, db DB, h Held, fs []Failure) (int64, error) {
	if len(fs) == 0 {
		return 0, nil
	}
	fs = slices.Clone(fs)
	slices.SortFunc(fs, func(a, b Failure) int { return cmp.Compare(a.Seq, b.Seq) })
	seqs, errs, retries, dead, parts := make([]int64, len(fs)), make([]string, len(fs)), make([]int64, len(fs)), make([]bool, len(fs)), make([]int32, len(fs))
	for i, f := range fs {
		seqs[i], errs[i], retries[i], dead[i], parts[i] = f.Seq, f.Err, f.Retry.Microseconds(), f.Dead, f.Part
	}
	tag, err := db.Exec(ctx, markFailedSQL, h.Owner, h.Parts, h.Epochs, seqs, errs, retries, dead, parts)
	if err != nil {
		return 0, fmt.Errorf("mark publish failures: %w", err)
	}
	return tag.RowsAffected(), nil
}

package writer

// Idempotency-Key: a write with a key is answered once; a retry with the same
// key gets the stored answer, byte for byte, and commits nothing.
//
// The life of a key (one row of the idempotency table):
//
//  1. claim: one short INSERT ... ON CONFLICT records the key as in flight,
//     bound to the request's method, target and a hash of its body. A
//     duplicate that arrives now finds the row: a different request → 422,
//     in flight → 409, done → the stored answer.
//  2. The write's own transaction records the answer in the row (an UPDATE
//     conditioned on still holding the claim), so a write never commits
//     without its answer, and never twice. The row stays in flight: the
//     answer's X-Cache-Write is only known after the cache write, so it is
//     recorded as "pending" here.
//  3. settle: after the cache write, the final answer replaces the recorded
//     one and the row is done; duplicates that arrived in between got 409,
//     so every replay is byte-identical to the first answer. A 4xx commits
//     nothing and is stored in one statement. A 5xx is not stored: the claim
//     is released so the retry runs.
//
// A request whose key is malformed (400) is answered without touching any
// key. Other bad input (400, 413, 415) is found before the claim; it is
// stored like any 4xx, and when the store is out of reach it is answered
// without being stored rather than as a 503: a client error is never a 5xx.
//
// Were the process to die between commit and settle, the row keeps the
// answer recorded in step 2; once the lease has passed, retries replay it.
// It says "pending", which is true of any committed write (the relay
// repairs the key), so the only cost of the crash is that one header value.
//
// The claim token is the row's created_at (clock_timestamp(), microseconds).
// An in-flight claim with no recorded answer, older than the lease, counts
// as abandoned and a retry may take it over; should the old request still
// be running, it then fails to record its answer, so its transaction rolls
// back and nothing commits twice. Rows past expires_at are treated as
// absent and pruned in small batches.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

const (
	claimSQL = `
INSERT INTO idempotency AS i (key, method, target, body_hash, state, created_at, expires_at)
VALUES ($1, $2, $3, $4, 'inflight', clock_timestamp(), clock_timestamp() + $5::float8 * interval '1 millisecond')
ON CONFLICT (key) DO UPDATE
SET method = excluded.method, target = excluded.target, body_hash = excluded.body_hash,
    state = 'inflight', status = NULL, headers = NULL, body = NULL,
    created_at = excluded.created_at, expires_at = excluded.expires_at
WHERE i.expires_at <= clock_timestamp()
   OR (i.state = 'inflight' AND i.status IS NULL
       AND i.created_at < clock_timestamp() - $6::float8 * interval '1 millisecond')
RETURNING created_at`

	lookupSQL = `
SELECT method, target, body_hash, state, status, headers, body,
       created_at < clock_timestamp() - $2::float8 * interval '1 millisecond'
FROM idempotency
WHERE key = $1 AND expires_at > clock_timestamp()`

	// recordSQL runs in the write's transaction.
	recordSQL = `
UPDATE idempotency
SET status = $3, headers = $4, body = $5,
    expires_at = clock_timestamp() + $6::float8 * interval '1 millisecond'
WHERE key = $1 AND created_at = $2 AND state = 'inflight' AND status IS NULL`

	finishSQL = `
UPDATE idempotency SET state = 'done', headers = $3, body = $4
WHERE key = $1 AND created_at = $2 AND state = 'inflight'`

	storeSQL = `
UPDATE idempotency
SET state = 'done', status = $3, headers = $4, body = $5,
    expires_at = clock_timestamp() + $6::float8 * interval '1 millisecond'
WHERE key = $1 AND created_at = $2 AND state = 'inflight' AND status IS NULL`

	releaseSQL = `
DELETE FROM idempotency
WHERE key = $1 AND created_at = $2 AND state = 'inflight' AND status IS NULL`

	pruneSQL = `
DELETE FROM idempotency
WHERE key IN (SELECT key FROM idempotency WHERE expires_at < clock_timestamp() LIMIT 500)`
)

// MaxIdempotencyKeyLen is the longest Idempotency-Key.
const MaxIdempotencyKeyLen = 255

var (
	// errKeyReused: the key belongs to a different request (422).
	errKeyReused = errors.New("this Idempotency-Key was used for a different request (method, target, body or precondition headers)")
	// errKeyInFlight: the first request with the key has not finished (409).
	errKeyInFlight = errors.New("a request with this Idempotency-Key is still in flight; retry later")
)

// idempotencyKey returns the request's Idempotency-Key, if any, checked to be
// 1 to 255 printable ASCII characters.
func idempotencyKey(h http.Header) (key string, ok bool, err error) {
	v, ok := h["Idempotency-Key"]
	if !ok {
		return "", false, nil
	}
	if len(v) != 1 {
		return "", false, invalid("Idempotency-Key", "must be given once")
	}
	key = v[0]
	if len(key) == 0 || len(key) > MaxIdempotencyKeyLen {
		return "", false, invalid("Idempotency-Key", "must be 1 to %d characters", MaxIdempotencyKeyLen)
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x20 || key[i] > 0x7e {
			return "", false, invalid("Idempotency-Key", "must be printable ASCII")
		}
	}
	return key, true, nil
}

// idemRequest is what a key is bound to.
type idemRequest struct {
	key, method, target string
	hash                []byte
}

// fingerprint binds key to the request: method, canonical target, and a hash
// of the body with the headers that change its meaning. The Content-Type
// counts by its media type alone: a charset parameter or letter case does
// not change what a JSON body means. A body over the limit counts by its
// first maxBody bytes (any body that starts so is over the limit too),
// marked so that no body within the limit hashes alike.
func (q *writeRequest) fingerprint(key string) idemRequest {
	h := sha256.New()
	for _, name := range []string{"Content-Type", "If-Match", "If-None-Match"} {
		for _, v := range q.header[name] {
			if name == "Content-Type" {
				if mt, _, err := mime.ParseMediaType(v); err == nil {
					v = mt
				}
			}
			h.Write([]byte(v))
			h.Write([]byte{0})
		}
		h.Write([]byte{1})
	}
	if q.tooLarge {
		h.Write([]byte{2})
	}
	h.Write(q.body)
	return idemRequest{key: key, method: q.method(), target: q.target(), hash: h.Sum(nil)}
}

type idempotencyStore struct {
	pool   *pgxpool.Pool
	ttl    time.Duration
	lease  time.Duration
	claims atomic.Uint64
}

// claim is a key held by the request that runs it.
type claim struct {
	store *idempotencyStore
	key   string
	token time.Time
}

const pruneEvery = 512

// claim takes the key for req, or returns the stored answer to replay, or
// errKeyReused / errKeyInFlight.
func (s *idempotencyStore) claim(ctx context.Context, req idemRequest) (*claim, *answer, error) {
	for range 3 {
		var token time.Time
		err := s.pool.QueryRow(ctx, claimSQL, req.key, req.method, req.target, req.hash, ms(s.ttl), ms(s.lease)).Scan(&token)
		if err == nil {
			if s.claims.Add(1)%pruneEvery == 0 {
				s.prune(ctx)
			}
			return &claim{store: s, key: req.key, token: token}, nil, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return nil, nil, fmt.Errorf("%w: claim idempotency key: %w", ErrUnavailable, err)
		}
		var (
			method, target, state string
			hash, body            []byte
			status                *int32
			headers               map[string]string
			stale                 bool
		)
		err = s.pool.QueryRow(ctx, lookupSQL, req.key, ms(s.lease)).Scan(&method, &target, &hash, &state, &status, &headers, &body, &stale)
		if errors.Is(err, pgx.ErrNoRows) {
			continue // released or expired since: claim again
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%w: read idempotency key: %w", ErrUnavailable, err)
		}
		switch {
		case method != req.method || target != req.target || !bytes.Equal(hash, req.hash):
			return nil, nil, errKeyReused
		case status == nil, state != "done" && !stale:
			return nil, nil, errKeyInFlight
		}
		a := storedAnswer(int(*status), headers, body)
		return nil, &a, nil
	}
	return nil, nil, errKeyInFlight
}

func ms(d time.Duration) float64 { return float64(d.Milliseconds()) }

// recordTx records a in the write's transaction; it fails, rolling the
// write back, if the claim was taken over meanwhile.
func (c *claim) recordTx(ctx context.Context, tx Tx, a *answer) error {
	tag, err := tx.Exec(ctx, recordSQL, c.key, c.token, a.status, a.headers(), a.body, ms(c.store.ttl))
	if err != nil {
		return fmt.Errorf("store idempotent answer: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return errClaimLost
	}
	return nil
}

// settle finishes the claim once the answer is known: it records the cache
// write of a committed answer, stores a 4xx, and releases the key on a 5xx.
func (s *idempotencyStore) settle(ctx context.Context, c *claim, a *answer, committed bool) error {
	// The answer must be recorded even if the client has gone.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	var err error
	switch {
	case committed:
		_, err = s.pool.Exec(ctx, finishSQL, c.key, c.token, a.headers(), a.body)
	case a.status < 500:
		_, err = s.pool.Exec(ctx, storeSQL, c.key, c.token, a.status, a.headers(), a.body, ms(s.ttl))
	default:
		_, err = s.pool.Exec(ctx, releaseSQL, c.key, c.token)
	}
	if err != nil {
		return fmt.Errorf("settle idempotency key: %w", err)
	}
	return nil
}

// prune removes a small batch of expired keys.
func (s *idempotencyStore) prune(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	_, _ = s.pool.Exec(ctx, pruneSQL)
}

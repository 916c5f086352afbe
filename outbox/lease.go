package outbox

import (
	"context"
	"fmt"
	"time"
)

// Lease is one partition a relay owns, at an epoch. The epoch grows with
// every change of owner; statements that mark entries check it, so a relay
// that lost a partition cannot mark its entries any more.
type Lease struct {
	Part  int32
	Epoch int64
}

// Held is the set of leases a relay claims to hold, passed to every marking
// statement. Marks apply only to entries of partitions whose lease row still
// names Owner at that epoch and has not expired (by the database's clock).
type Held struct {
	Owner  string
	Parts  []int32
	Epochs []int64
}

// NewHeld returns the Held of owner's leases.
func NewHeld(owner string, leases []Lease) Held {
	h := Held{Owner: owner, Parts: make([]int32, len(leases)), Epochs: make([]int64, len(leases))}
	for i, l := range leases {
		h.Parts[i], h.Epochs[i] = l.Part, l.Epoch
	}
	return h
}

// heldCTE locks the caller's live lease rows FOR KEY SHARE for the
// statement. A takeover selects its candidates FOR UPDATE SKIP LOCKED, so it
// skips a partition while a mark of it is in progress and the new owner's
// first claim sees the mark; the owner's own renewals (plain UPDATEs) do not
// conflict with it, so a long mark never delays a renewal. $1 owner, $2
// parts, $3 epochs.
const heldCTE = `
WITH held AS (
    SELECT l.part FROM leases l
    JOIN unnest($2::int[], $3::bigint[]) AS h(part, epoch) ON l.part = h.part AND l.epoch = h.epoch
    WHERE l.owner = $1 AND l.lease_until > now()
    ORDER BY l.part
    FOR KEY SHARE OF l
)`

const heartbeatSQL = `
INSERT INTO relays (id, hostname, pid) VALUES ($1, $2, $3)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
RETURNING (SELECT count(*) FROM relays WHERE id <> $1 AND heartbeat_at > now() - $4 * interval '1 microsecond') + 1`

// Heartbeat records that relay id is alive and returns how many relays are
// alive (heartbeat within ttl), itself included.
func Heartbeat(ctx context.Context, db DB, id, hostname string, pid int, ttl time.Duration) (int, error) {
	var n int
	if err := db.QueryRow(ctx, heartbeatSQL, id, hostname, pid, ttl.Microseconds()).Scan(&n); err != nil {
		return 0, fmt.Errorf("relay heartbeat: %w", err)
	}
	return n, nil
}

// Unregister removes relay id from the live relays.
func Unregister(ctx context.Context, db DB, id string) error {
	if _, err := db.Exec(ctx, `DELETE FROM relays WHERE id = $1`, id); err != nil {
		return fmt.Errorf("unregister relay: %w", err)
	}
	return nil
}

// acquireSQL takes up to $2 partitions that are free or whose lease expired,
// bumps their epoch, closes the previous owner's lease_log row at the moment
// its lease ran out, and opens one for the new owner; all in one statement.
const acquireSQL = `
WITH cand AS (
    SELECT part, epoch, lease_until FROM leases
    WHERE owner IS NULL OR lease_until <= now()
    ORDER BY part
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), got AS (
    UPDATE leases l SET owner = $1, epoch = l.epoch + 1, lease_until = now() + $3 * interval '1 microsecond'
    FROM cand WHERE l.part = cand.part
    RETURNING l.part, l.epoch, cand.epoch AS old_epoch, cand.lease_until AS old_until
), closed AS (
    UPDATE lease_log g SET released_at = least(got.old_until, now())
    FROM got WHERE g.part = got.part AND g.epoch = got.old_epoch AND g.released_at IS NULL
), logged AS (
    INSERT INTO lease_log (part, epoch, owner, acquired_at)
    SELECT part, epoch, $1, now() FROM got
)
SELECT part, epoch FROM got ORDER BY part`

// Acquire takes up to n free or expired partitions for owner for ttl.
func Acquire(ctx context.Context, db DB, owner string, n int, ttl time.Duration) ([]Lease, error) {
	if n <= 0 {
		return nil, nil
	}
	rows, err := db.Query(ctx, acquireSQL, owner, n, ttl.Microseconds())
	if err != nil {
		return nil, fmt.Errorf("acquire leases: %w", err)
	}
	defer rows.Close()
	var out []Lease
	for rows.Next() {
		var l Lease
		if err := rows.Scan(&l.Part, &l.Epoch); err != nil {
			return nil, fmt.Errorf("acquire leases: %w", err)
		}
		out = append(out, l)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("acquire leases: %w", err)
	}
	return out, nil
}

const renewSQL = `
UPDATE leases l SET lease_until = now() + $4 * interval '1 microsecond'
FROM unnest($2::int[], $3::bigint[]) AS h(part, epoch)
WHERE l.part = h.part AND l.epoch = h.epoch AND l.owner = $1 AND l.lease_until > now()
RETURNING l.part`

// Renew extends the leases in h that are still live by ttl and returns the
// partitions renewed. A lease that already expired is not renewed: the
// owner must acquire it again, at a new epoch.
func Renew(ctx context.Context, db DB, h Held, ttl time.Duration) ([]int32, error) {
	if len(h.Parts) == 0 {
		return nil, nil
	}
	rows, err := db.Query(ctx, renewSQL, h.Owner, h.Parts, h.Epochs, ttl.Microseconds())
	if err != nil {
		return nil, fmt.Errorf("renew leases: %w", err)
	}
	defer rows.Close()
	var out []int32
	for rows.Next() {
		var p int32
		if err := rows.Scan(&p); err != nil {
			return nil, fmt.Errorf("renew leases: %w", err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("renew leases: %w", err)
	}
	return out, nil
}

const releaseSQL = `
WITH rel AS (
    UPDATE leases l SET owner = NULL, lease_until = now()
    FROM unnest($2::int[], $3::bigint[]) AS h(part, epoch)
    WHERE l.part = h.part AND l.epoch = h.epoch AND l.owner = $1 AND l.lease_until > now()
    RETURNING l.part, l.epoch
)
UPDATE lease_log g SET released_at = now() FROM rel
WHERE g.part = rel.part AND g.epoch = rel.epoch AND g.released_at IS NULL`

// Release gives up the leases in h at once and closes their lease_log rows.
func Release(ctx context.Context, db DB, h Held) error {
	if len(h.Parts) == 0 {
		return nil
	}
	if _, err := db.Exec(ctx, releaseSQL, h.Owner, h.Parts, h.Epochs); err != nil {
		return fmt.Errorf("release leases: %w", err)
	}
	return nil
}

// LeaseRecord is one row of lease_log: a lease a relay held.
type LeaseRecord struct {
	Part       int32
	Epoch      int64
	Owner      string
	AcquiredAt time.Time
	// ReleasedAt is nil while the lease is held (or until the next owner
	// takes over a lease that ran out).
	ReleasedAt *time.Time
}

// LeaseLog returns lease_log ordered by partition and epoch.
func LeaseLog(ctx context.Context, db DB) ([]LeaseRecord, error) {
	rows, err := db.Query(ctx, `SELECT part, epoch, owner, acquired_at, released_at FROM lease_log ORDER BY part, epoch`)
	if err != nil {
		return nil, fmt.Errorf("read lease log: %w", err)
	}
	defer rows.Close()
	var out []LeaseRecord
	for rows.Next() {
		var r LeaseRecord
		if err := rows.Scan(&r.Part, &r.Epoch, &r.Owner, &r.AcquiredAt, &r.ReleasedAt); err != nil {
			return nil, fmt.Errorf("read lease log: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read lease log: %w", err)
	}
	return out, nil
}

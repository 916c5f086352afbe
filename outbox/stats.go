package outbox

import (
	"context"
	"fmt"
	"time"
)

// Stats is a snapshot of the outbox for metrics.
type Stats struct {
	// Lag is the age of the oldest entry whose event still waits for
	// publishing (0 when none waits).
	Lag time.Duration
	// Dead is the number of dead letters.
	Dead int64
}

// statsSQL finds the oldest unpublished entry per partition through the
// outbox_due index, so the scan never walks the finished history.
const statsSQL = `
SELECT coalesce(extract(epoch FROM now() - min(o.committed_at)), 0)::float8,
       (SELECT count(*) FROM outbox WHERE publish_state = 'dead')
FROM generate_series(0, $1 - 1) AS p(part)
LEFT JOIN LATERAL (
    SELECT committed_at FROM outbox
    WHERE part = p.part AND publish_state = 'pending'
    ORDER BY seq LIMIT 1
) o ON true`

// ReadStats returns the outbox lag and dead-letter count.
func ReadStats(ctx context.Context, db DB) (Stats, error) {
	var lag float64
	var s Stats
	if err := db.QueryRow(ctx, statsSQL, Partitions).Scan(&lag, &s.Dead); err != nil {
		return Stats{}, fmt.Errorf("read outbox stats: %w", err)
	}
	s.Lag = time.Duration(max(lag, 0) * float64(time.Second))
	return s, nil
}

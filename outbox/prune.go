package outbox

import (
	"context"
	"fmt"
	"time"
)

// PruneLeaseLog deletes closed lease_log rows released before the retention
// horizon, and forgets relays not seen for as long.
func PruneLeaseLog(ctx context.Context, db DB, retention time.Duration) error {
	us := retention.Microseconds()
	if _, err := db.Exec(ctx, `DELETE FROM lease_log WHERE released_at < now() - $1 * interval '1 microsecond'`, us); err != nil {
		return fmt.Errorf("prune lease log: %w", err)
	}
	if _, err := db.Exec(ctx, `DELETE FROM relays WHERE heartbeat_at < now() - $1 * interval '1 microsecond'`, us); err != nil {
		return fmt.Errorf("prune relays: %w", err)
	}
	return nil
}

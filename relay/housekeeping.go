package relay

import (
	"context"
	"log/slog"
	"time"

	"github.com/writethrough/writethrough/outbox"
)

const pruneBatch = 1000

// housekeep refreshes the outbox gauges and prunes finished entries past
// the retention, in small batches.
func (r *Relay) housekeep(ctx context.Context) {
	t := time.NewTicker(r.cfg.HousekeepingInterval)
	defer t.Stop()
	var lastPrune time.Time
	for {
		if st, err := outbox.ReadStats(ctx, r.pool); err == nil {
			r.metrics.setLag(st.Lag.Seconds())
			r.metrics.deadTotal.Store(st.Dead)
		} else if ctx.Err() == nil {
			r.log.Debug("read outbox stats failed", slog.String("error", err.Error()))
		}
		if time.Since(lastPrune) >= time.Minute {
			lastPrune = time.Now()
			if n, err := outbox.PruneFinished(ctx, r.pool, time.Now().Add(-r.cfg.Retention), pruneBatch, nil); err != nil && ctx.Err() == nil {
				r.log.Warn("prune outbox failed", slog.String("error", err.Error()))
			} else if n > 0 {
				r.log.Info("outbox pruned", slog.Int64("entries", n))
			}
			if err := outbox.PruneLeaseLog(ctx, r.pool, r.cfg.Retention); err != nil && ctx.Err() == nil {
				r.log.Warn("prune lease log failed", slog.String("error", err.Error()))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func unregister(ctx context.Context, r *Relay) error {
	return outbox.Unregister(ctx, r.pool, r.cfg.ID)
}

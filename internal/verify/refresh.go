package verify

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/writethrough/writethrough/internal/fence"
)

// RefreshConfig selects the entities Refresh writes back to the cache. The
// zero value of a filter means "any".
type RefreshConfig struct {
	// Pool reads entities. Required.
	Pool *pgxpool.Pool
	// Fence writes the cache. Required.
	Fence *fence.Fence
	// Collection and ID select one collection or one key.
	Collection, ID string
	// Since (inclusive) and Until (exclusive) bound the entity's updated_at:
	// the time of its last change.
	Since, Until time.Time
	// Batch is the number of keys per round trip; default 1000.
	Batch int
	// DryRun counts the entities without writing.
	DryRun bool
	// Progress, when set, is called after every batch.
	Progress func(done int64)
}

// RefreshReport counts what Refresh did.
type RefreshReport struct {
	Selected int64 `json:"selected"`
	// Applied keys took the row's version; FencedOut keys already held it or
	// a newer one.
	Applied   int64 `json:"applied"`
	FencedOut int64 `json:"fenced_out"`
}

const refreshSQL = `
SELECT collection, id, version, data::text, updated_at FROM entities
WHERE ($1 = '' OR collection = $1)
  AND ($2 = '' OR id = $2)
  AND ($3::timestamptz IS NULL OR updated_at >= $3)
  AND ($4::timestamptz IS NULL OR updated_at < $4)
  AND (collection, id) > ($5, $6)
ORDER BY collection, id LIMIT $7`

const refreshCountSQL = `
SELECT count(*) FROM entities
WHERE ($1 = '' OR collection = $1)
  AND ($2 = '' OR id = $2)
  AND ($3::timestamptz IS NULL OR updated_at >= $3)
  AND ($4::timestamptz IS NULL OR updated_at < $4)`

func (c *RefreshConfig) args() []any {
	var since, until *time.Time
	if !c.Since.IsZero() {
		since = &c.Since
	}
	if !c.Until.IsZero() {
		until = &c.Until
	}
	return []any{c.Collection, c.ID, since, until}
}

// CountRefresh returns how many entities Refresh would select.
func CountRefresh(ctx context.Context, cfg RefreshConfig) (int64, error) {
	if cfg.Pool == nil {
		return 0, errors.New("verify: RefreshConfig.Pool is required")
	}
	var n int64
	if err := cfg.Pool.QueryRow(ctx, refreshCountSQL, cfg.args()...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count entities: %w", err)
	}
	return n, nil
}

// Refresh writes the current row of every selected entity (tombstones
// included) through the fence. The fence applies a version only over a lower
// one, so it never regresses a key and is safe while writes continue and to
// run again.
func Refresh(ctx context.Context, cfg RefreshConfig) (*RefreshReport, error) {
	if cfg.Pool == nil || cfg.Fence == nil {
		return nil, errors.New("verify: RefreshConfig.Pool and Fence are required")
	}
	if cfg.Batch < 0 {
		return nil, errors.New("verify: RefreshConfig.Batch must not be negative")
	}
	batchSize := cmp.Or(cfg.Batch, 1000)
	rep := &RefreshReport{}
	var afterC, afterID string
	entries := make([]fence.Entry, 0, batchSize)
	for {
		rows, err := cfg.Pool.Query(ctx, refreshSQL, append(cfg.args(), afterC, afterID, batchSize)...)
		if err != nil {
			return rep, fmt.Errorf("read entities: %w", err)
		}
		batch, err := scanRows(rows)
		if err != nil {
			return rep, fmt.Errorf("read entities: %w", err)
		}
		if len(batch) == 0 {
			return rep, nil
		}
		afterC, afterID = batch[len(batch)-1].collection, batch[len(batch)-1].id
		rep.Selected += int64(len(batch))
		if !cfg.DryRun {
			entries = entries[:0]
			for i := range batch {
				entries = append(entries, batch[i].entry())
			}
			outs, err := cfg.Fence.Apply(ctx, entries...)
			for _, o := range outs {
				switch o {
				case fence.Applied:
					rep.Applied++
				case fence.FencedOut:
					rep.FencedOut++
				}
			}
			if err != nil {
				return rep, err
			}
		}
		if cfg.Progress != nil {
			cfg.Progress(rep.Selected)
		}
		if len(batch) < batchSize {
			return rep, nil
		}
	}
}

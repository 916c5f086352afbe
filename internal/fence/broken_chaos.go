//go:build chaos

package fence

import (
	"context"
	"fmt"
	"os"

	"github.com/redis/go-redis/v9"
)

// brokenApply, with WT_BROKEN=unfenced, writes every entry with a plain
// HSET, the bug the fence exists to prevent (PITFALLS §1): a late, older
// write overwrites a newer one. It exists only so the consistency suite
// (internal/chaos) can prove its checkers catch that bug; it is compiled
// only with the chaos build tag and never in the release binary.
func brokenApply(ctx context.Context, f *Fence, entries []Entry) ([]Outcome, bool, error) {
	if os.Getenv("WT_BROKEN") != "unfenced" {
		return nil, false, nil
	}
	out := make([]Outcome, len(entries))
	_, err := f.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, e := range entries {
			key := f.Key(e.Collection, e.ID)
			if e.Data == nil {
				p.HDel(ctx, key, "d")
				p.HSet(ctx, key, "v", e.Version, "u", e.UpdatedAt)
			} else {
				p.HSet(ctx, key, "v", e.Version, "u", e.UpdatedAt, "d", string(e.Data))
			}
		}
		return nil
	})
	for i := range out {
		out[i] = Applied
		if err != nil {
			out[i] = Failed
		}
	}
	if err != nil {
		return out, true, fmt.Errorf("unfenced cache write: %w", err)
	}
	return out, true, nil
}

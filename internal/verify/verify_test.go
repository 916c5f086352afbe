package verify_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/internal/testenv"
	"github.com/writethrough/writethrough/internal/verify"
)

// seed inserts n live entities of collection "bench" straight into Postgres.
func seed(t *testing.T, env *testenv.Env, n int) {
	t.Helper()
	_, err := env.Pool.Exec(context.Background(), `
INSERT INTO entities (collection, id, version, data, deleted, created, updated_at)
SELECT 'bench', 'k' || g, 1 + g % 3, jsonb_build_object('i', g, 'name', 'entity ' || g), false, true, now()
FROM generate_series(1, $1) g`, n)
	require.NoError(t, err)
}

// TestCacheVerifyThroughput measures verify on 100k keys (10k with -short)
// and checks it still catches divergences injected among them. The figure
// is logged; the target is 20k keys/s.
func TestCacheVerifyThroughput(t *testing.T) {
	t.Parallel()
	env := testenv.New(t)
	ctx := context.Background()
	n := 100_000
	if testing.Short() {
		n = 10_000
	}
	seed(t, env, n)

	start := time.Now()
	ref, err := verify.Refresh(ctx, verify.RefreshConfig{Pool: env.Pool, Fence: env.Fence})
	require.NoError(t, err)
	require.EqualValues(t, n, ref.Applied)
	t.Logf("refresh: %d keys in %s (%.0f keys/s)", n, time.Since(start).Round(time.Millisecond), float64(n)/time.Since(start).Seconds())

	// A refresh of a warm cache changes nothing.
	ref, err = verify.Refresh(ctx, verify.RefreshConfig{Pool: env.Pool, Fence: env.Fence, Collection: "bench"})
	require.NoError(t, err)
	require.EqualValues(t, n, ref.FencedOut)

	rep, err := verify.Run(ctx, verify.Config{Pool: env.Pool, Fence: env.Fence})
	require.NoError(t, err)
	require.EqualValues(t, n, rep.Checked)
	require.EqualValues(t, n, rep.KeysScanned)
	require.Zero(t, rep.Divergent())
	rate := float64(rep.Checked) / rep.Elapsed
	t.Logf("verify: %d keys (entity scan and orphan scan) in %.2fs: %.0f keys/s", n, rep.Elapsed, rate)

	require.NoError(t, env.Redis.Del(ctx, env.Prefix+"bench:k17").Err())
	require.NoError(t, env.Redis.HSet(ctx, env.Prefix+"bench:k99", "d", "{}").Err())
	require.NoError(t, env.Redis.HSet(ctx, env.Prefix+"bench:zzz", "v", "1").Err())
	rep, err = verify.Run(ctx, verify.Config{Pool: env.Pool, Fence: env.Fence, Collection: "bench"})
	require.NoError(t, err)
	require.EqualValues(t, 1, rep.Missing)
	require.EqualValues(t, 1, rep.DataMismatch)
	require.EqualValues(t, 1, rep.Orphans)
	require.Len(t, rep.Samples, 3)
}

// TestCacheRepairFixes repairs missing and stale keys in one pass.
func TestCacheRepairFixes(t *testing.T) {
	t.Parallel()
	env := testenv.New(t)
	ctx := context.Background()
	seed(t, env, 3)
	require.NoError(t, env.Redis.HSet(ctx, env.Prefix+"bench:k1", "v", "1", "d", `"wrong"`, "u", "x").Err())
	calls := 0
	rep, err := verify.Run(ctx, verify.Config{Pool: env.Pool, Fence: env.Fence, Repair: true, Progress: func(int64) { calls++ }})
	require.NoError(t, err)
	require.EqualValues(t, 2, rep.Missing)
	require.EqualValues(t, 1, rep.Stale) // k1 is at v2 in Postgres (1 + 1 % 3)
	require.EqualValues(t, 3, rep.Repaired)
	require.Equal(t, 1, calls)
	rep, err = verify.Run(ctx, verify.Config{Pool: env.Pool, Fence: env.Fence})
	require.NoError(t, err)
	require.Zero(t, rep.Divergent())

	_, err = verify.Run(ctx, verify.Config{Pool: env.Pool, Fence: env.Fence, DeleteOrphans: true})
	require.Error(t, err, "deleting orphans needs Repair")
}

package fence_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/internal/fence"
	"github.com/writethrough/writethrough/internal/testenv"
)

func TestFenceAppliesOnlyNewerVersions(t *testing.T) {
	t.Parallel()
	env := testenv.New(t)
	ctx := context.Background()
	f := env.Fence
	key := env.Prefix + "c:k"

	out, err := f.Apply(ctx, fence.Entry{Collection: "c", ID: "k", Version: 8, Data: []byte(`"v8"`), UpdatedAt: "u8"})
	require.NoError(t, err)
	require.Equal(t, []fence.Outcome{fence.Applied}, out)

	// An older and an equal version are no-ops.
	out, err = f.Apply(ctx,
		fence.Entry{Collection: "c", ID: "k", Version: 7, Data: []byte(`"v7"`), UpdatedAt: "u7"},
		fence.Entry{Collection: "c", ID: "k", Version: 8, Data: []byte(`"other"`), UpdatedAt: "u8b"})
	require.NoError(t, err)
	require.Equal(t, []fence.Outcome{fence.FencedOut, fence.FencedOut}, out)
	h := env.Redis.HGetAll(ctx, key).Val()
	require.Equal(t, map[string]string{"v": "8", "d": `"v8"`, "u": "u8"}, h)

	// A tombstone keeps the version, drops d, and expires.
	_, err = f.Apply(ctx, fence.Entry{Collection: "c", ID: "k", Version: 9, UpdatedAt: "u9"})
	require.NoError(t, err)
	require.Equal(t, map[string]string{"v": "9", "u": "u9"}, env.Redis.HGetAll(ctx, key).Val())
	require.Positive(t, env.Redis.PTTL(ctx, key).Val())
	c, ok, err := f.Get(ctx, "c", "k")
	require.NoError(t, err)
	require.True(t, ok)
	require.True(t, c.Tombstone())

	// A late fill of an older value cannot resurrect it.
	out, _ = f.Apply(ctx, fence.Entry{Collection: "c", ID: "k", Version: 8, Data: []byte(`"v8"`), UpdatedAt: "u8"})
	require.Equal(t, []fence.Outcome{fence.FencedOut}, out)

	// A value after the tombstone clears the expiry (values have no TTL by default).
	_, err = f.Apply(ctx, fence.Entry{Collection: "c", ID: "k", Version: 10, Data: []byte(`1`), UpdatedAt: "u10"})
	require.NoError(t, err)
	require.EqualValues(t, -1, env.Redis.PTTL(ctx, key).Val())
}

// Racing writers of every version in random order leave the highest one.
func TestFenceUnderRace(t *testing.T) {
	t.Parallel()
	env := testenv.New(t)
	ctx := context.Background()
	for round := range 20 {
		id := strconv.Itoa(round)
		var wg sync.WaitGroup
		for v := int64(1); v <= 32; v++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := env.Fence.Apply(ctx, fence.Entry{Collection: "c", ID: id, Version: v, Data: fmt.Appendf(nil, "%d", v), UpdatedAt: "u"})
				require.NoError(t, err)
			}()
		}
		wg.Wait()
		c, ok, err := env.Fence.Get(ctx, "c", id)
		require.NoError(t, err)
		require.True(t, ok)
		require.EqualValues(t, 32, c.Version)
		require.Equal(t, "32", string(c.Data))
	}
}

func TestRepairIsConditionedOnWhatWasSeen(t *testing.T) {
	t.Parallel()
	env := testenv.New(t)
	ctx := context.Background()
	f := env.Fence
	_, err := f.Apply(ctx, fence.Entry{Collection: "c", ID: "k", Version: 3, Data: []byte(`"bad"`), UpdatedAt: "u3"})
	require.NoError(t, err)
	seen, _, err := f.Get(ctx, "c", "k")
	require.NoError(t, err)

	// Same version, different data: repair fixes it while the key is as seen.
	o, err := f.Repair(ctx, fence.Entry{Collection: "c", ID: "k", Version: 3, Data: []byte(`"good"`), UpdatedAt: "u3"}, &seen)
	require.NoError(t, err)
	require.Equal(t, fence.Applied, o)
	require.Equal(t, `"good"`, env.Redis.HGet(ctx, env.Prefix+"c:k", "d").Val())

	// A concurrent newer write wins: the key no longer matches what was seen.
	_, err = f.Apply(ctx, fence.Entry{Collection: "c", ID: "k", Version: 4, Data: []byte(`"v4"`), UpdatedAt: "u4"})
	require.NoError(t, err)
	o, err = f.Repair(ctx, fence.Entry{Collection: "c", ID: "k", Version: 3, Data: []byte(`"good"`), UpdatedAt: "u3"}, &seen)
	require.NoError(t, err)
	require.Equal(t, fence.FencedOut, o)
	o, err = f.DeleteIfUnchanged(ctx, "c", "k", &seen)
	require.NoError(t, err)
	require.Equal(t, fence.FencedOut, o)
	require.Equal(t, "4", env.Redis.HGet(ctx, env.Prefix+"c:k", "v").Val())

	// Absent key seen as absent: repair writes it.
	o, err = f.Repair(ctx, fence.Entry{Collection: "c", ID: "new", Version: 1, Data: []byte(`1`), UpdatedAt: "u"}, nil)
	require.NoError(t, err)
	require.Equal(t, fence.Applied, o)
}

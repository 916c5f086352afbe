package relay

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/internal/fence"
	"github.com/writethrough/writethrough/internal/testenv"
	"github.com/writethrough/writethrough/outbox"
	"github.com/writethrough/writethrough/writer"
)

// TestLocalWriterWakesRelayWithoutNotify: a writer given the relay of its
// process wakes it directly for the partitions it holds, sends no NOTIFY
// for them, and the events go out without waiting for the poll interval.
func TestLocalWriterWakesRelayWithoutNotify(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg := b.config(nil)
	cfg.PollInterval = time.Hour // only a wake-up can start a claim
	r := b.start(t, cfg)
	eventually(t, 10*time.Second, func() bool { return r.leases.workableSet() == outbox.AllParts }, "the relay holds every partition")
	require.Equal(t, outbox.PartSet(0), r.WakeHeld([]*outbox.Entry{{Partition: 3}}, false))

	w := localWriter(t, b, r)

	listener := b.env.Listen(t)

	// The wake-up of taking the leases has been taken by a claim.
	eventually(t, 5*time.Second, func() bool { return r.wakeParts.Load() == 0 }, "the leases' wake-up claimed")
	for i := range 5 {
		_, err := w.Put(ctx, "users", "local-"+string(rune('a'+i)), []byte(`{}`))
		require.NoError(t, err)
	}
	eventually(t, 5*time.Second, func() bool { return pendingPublish(t, b.env) == 0 }, "every event published on a direct wake-up")

	wctx, wcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer wcancel()
	n, err := listener.WaitForNotification(wctx)
	require.True(t, errors.Is(err, context.DeadlineExceeded) || pgconnTimeout(err), "want no NOTIFY, got %v (%v)", n, err)
}

// pgconnTimeout reports an error from a wait that ran out of time.
func pgconnTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// TestLocalWriterSettlesCacheWithoutRead: entries whose cache write the
// writer in this process saw succeed are settled when published, without
// the relay reading the cache. The relay here looks at another key prefix,
// where it would find nothing, and its repair grace outlasts the test, so
// an entry it had to check would stay unsettled.
func TestLocalWriterSettlesCacheWithoutRead(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	elsewhere, err := fence.New(b.env.Redis, fence.Config{Prefix: b.env.Prefix + "elsewhere:"})
	require.NoError(t, err)
	cfg := b.config(elsewhere)
	cfg.RepairGrace = time.Hour // an unsettled entry stays pending throughout the test
	// Only the writer's wake-ups start claims, so none reads an entry
	// between its commit and the writer's word on its cache write (such a
	// claim reads the cache, as for a writer elsewhere).
	cfg.PollInterval = time.Hour
	r := b.start(t, cfg)
	eventually(t, 10*time.Second, func() bool { return r.leases.workableSet() == outbox.AllParts }, "the relay holds every partition")
	w := localWriter(t, b, r)

	eventually(t, 5*time.Second, func() bool { return r.wakeParts.Load() == 0 }, "the leases' wake-up claimed")
	for i := range 20 {
		res, err := w.Put(ctx, "users", fmt.Sprintf("s%d", i), []byte(`{}`))
		require.NoError(t, err)
		require.Equal(t, writer.CacheOK, res.CacheWrite)
		eventually(t, 5*time.Second, func() bool {
			return countState(t, b.env, `publish_state = 'done' AND cache_state = 'done'`) == i+1
		}, "entry %d published and settled", i)
	}
	n, err := b.env.Redis.Exists(ctx, b.env.Prefix+"elsewhere:users:s0").Result()
	require.NoError(t, err)
	require.Zero(t, n, "the relay repaired a key the writer had cached")
}

// TestRepairDueWakesClaim: an entry whose synchronous cache write failed is
// published at once and repaired when its grace has passed, by a claim the
// relay schedules itself: the poll interval (an hour here) plays no part.
func TestRepairDueWakesClaim(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var logs testenv.SyncBuffer
	r, _ := startIdle(t, b, &logs)
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, ContextTimeoutEnabled: true})
	defer rdb.Close()
	down, err := fence.New(rdb, fence.Config{Prefix: b.env.Prefix})
	require.NoError(t, err)
	w, err := writer.New(writer.Config{Pool: b.env.Pool, Fence: down, LocalRelay: r})
	require.NoError(t, err)
	defer w.Close()

	ctx := context.Background()
	keys := []key{{"users", "r1"}, {"users", "r2"}}
	for i, k := range keys {
		res, err := w.Put(ctx, k.c, k.id, fmt.Appendf(nil, `{"i": %d}`, i))
		require.NoError(t, err)
		require.Equal(t, writer.CachePending, res.CacheWrite)
	}
	eventually(t, 5*time.Second, func() bool {
		return countState(t, b.env, `publish_state = 'pending' OR cache_state = 'pending'`) == 0 && converged(t, b.env, b.env.Fence, keys)
	}, "repaired within the grace, with no poll")
}

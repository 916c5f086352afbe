package relay

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/internal/fence"
	"github.com/writethrough/writethrough/internal/testenv"
	"github.com/writethrough/writethrough/outbox"
)

func TestNATSOutageLosesNothing(t *testing.T) {
	t.Parallel()
	env := testenv.New(t)
	srv := startNATS(t, "")
	b := setupWith(t, env, srv.url("nats"), env.Fence)
	b.start(t, b.config(nil))
	keys := makeKeys(10)

	b.writes(t, 50, keys)
	eventually(t, 10*time.Second, func() bool { return pendingPublish(t, env) == 0 }, "published before the outage")

	srv.stop()
	b.writes(t, 100, keys) // writes go on while NATS is down
	eventually(t, 5*time.Second, func() bool { return b.nc.Status() != 1 }, "client noticed the outage")
	require.Positive(t, pendingPublish(t, env))
	srv.start() // same port, same store

	eventually(t, 20*time.Second, func() bool { return pendingPublish(t, env) == 0 }, "published after the outage")
	require.Zero(t, countState(t, env, `publish_state = 'dead'`), "no dead letters")
	require.Zero(t, countState(t, env, `attempts > 0`), "an outage burns no attempts")
	checkEvents(t, env, readStream(t, b.js, env.Stream))
}

func TestRedisOutageConverges(t *testing.T) {
	t.Parallel()
	env := testenv.New(t)
	rs := startRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: rs.url("redis")[len("redis://"):], MaxRetries: -1, DialTimeout: 200 * time.Millisecond, ContextTimeoutEnabled: true})
	t.Cleanup(func() { closeRedis(t, rdb) })
	f, err := fence.New(rdb, fence.Config{Prefix: env.Prefix})
	require.NoError(t, err)
	b := setupWith(t, env, env.NATSURL, f)
	b.start(t, b.config(f))
	keys := makeKeys(10)

	// A poller records every version it reads; none may go backwards
	// (absent is allowed: the restarted Redis is empty).
	ctx, cancel := context.WithCancel(context.Background())
	var backwards atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		last := map[string]int64{}
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for ; ctx.Err() == nil; <-tick.C {
			for _, k := range keys {
				c, ok, err := f.Get(ctx, k.c, k.id)
				if err != nil || !ok {
					continue
				}
				if c.Version < last[k.id] {
					backwards.Add(1)
				}
				last[k.id] = c.Version
			}
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })

	b.writes(t, 30, keys)
	rs.stop()
	b.writes(t, 40, keys) // answered pending
	// Every key is written during the outage: the restarted Redis is empty,
	// and only keys written since the fault must hold their current row (a
	// key the restart emptied may stay absent).
	for _, k := range keys {
		b.writes(t, 1, []key{k})
	}
	require.Positive(t, countState(t, env, `cache_state = 'pending'`))
	rs.start()
	healed := time.Now()

	eventually(t, 5*time.Second, func() bool { return converged(t, env, f, keys) }, "every key converges to Postgres")
	t.Logf("converged %s after Redis came back", time.Since(healed).Round(time.Millisecond))
	eventually(t, 5*time.Second, func() bool { return countState(t, env, `cache_state = 'pending'`) == 0 }, "repairs marked")
	require.Zero(t, backwards.Load(), "a version went backwards")
}

// converged reports whether every key's cache hash equals its current row.
func converged(t testing.TB, env *testenv.Env, f *fence.Fence, keys []key) bool {
	cols, ids := make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		cols[i], ids[i] = k.c, k.id
	}
	rows, err := outbox.CurrentRows(context.Background(), env.Pool, cols, ids)
	require.NoError(t, err)
	for _, row := range rows {
		c, ok, err := f.Get(context.Background(), row.Collection, row.ID)
		if err != nil || !ok || c.Version != row.Version || string(c.Data) != string(row.Data) || c.UpdatedAt != outbox.FormatTime(row.UpdatedAt) {
			return false
		}
	}
	return true
}

package writer_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/internal/fence"
	"github.com/writethrough/writethrough/internal/pg"
	"github.com/writethrough/writethrough/internal/testenv"
	"github.com/writethrough/writethrough/writer"
)

// With Redis unreachable a write still commits, reports pending, and leaves
// its outbox entry due for the relay; reads are served from Postgres.
func TestRedisUnreachableWritesPending(t *testing.T) {
	t.Parallel()
	env := testenv.New(t)
	ctx := context.Background()
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 50 * time.Millisecond, ContextTimeoutEnabled: true})
	t.Cleanup(func() { dead.Close() })
	f, err := fence.New(dead, fence.Config{Prefix: env.Prefix})
	require.NoError(t, err)
	w, err := writer.New(writer.Config{Pool: env.Pool, Fence: f, CacheTimeout: 100 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(w.Close)

	res, err := w.Do(ctx, func(tx writer.Tx) error {
		_, err := tx.Put(ctx, "users", "1", []byte(`{"a":1}`))
		return err
	})
	require.NoError(t, err)
	require.Equal(t, writer.CachePending, res.CacheWrite)

	var state string
	require.NoError(t, env.Pool.QueryRow(ctx, `SELECT cache_state FROM outbox WHERE collection='users' AND entity_id='1'`).Scan(&state))
	require.Equal(t, "pending", state)

	e, src, err := w.Get(ctx, "users", "1")
	require.NoError(t, err)
	require.Equal(t, writer.FromPostgres, src)
	require.EqualValues(t, 1, e.Version)
	require.Equal(t, `{"a": 1}`, string(e.Data))
}

// With Postgres unreachable a write fails as unavailable and nothing reaches
// Redis.
func TestPostgresUnreachableNothingCached(t *testing.T) {
	t.Parallel()
	env := testenv.New(t)
	ctx := context.Background()
	pool, err := pg.Open(ctx, pg.Config{URL: "postgres://postgres@127.0.0.1:1/test?sslmode=disable&connect_timeout=1", Schema: env.Schema})
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	w, err := writer.New(writer.Config{Pool: pool, Fence: env.Fence})
	require.NoError(t, err)
	t.Cleanup(w.Close)

	_, err = w.Do(ctx, func(tx writer.Tx) error {
		_, err := tx.Put(ctx, "users", "1", []byte(`{"a":1}`))
		return err
	})
	require.ErrorIs(t, err, writer.ErrUnavailable)
	n, err := env.Redis.Exists(ctx, env.Prefix+"users:1").Result()
	require.NoError(t, err)
	require.Zero(t, n)

	_, _, err = w.Get(ctx, "users", "1")
	require.ErrorIs(t, err, writer.ErrUnavailable)
}

// Bad input is rejected before anything is committed or cached.
func TestInvalidInputCommitsNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	cases := map[string]func(tx writer.Tx) error{
		"bad json": func(tx writer.Tx) error {
			_, err := tx.Put(ctx, "users", "1", []byte(`{"a":`))
			return err
		},
		"nul in string": func(tx writer.Tx) error {
			_, err := tx.Put(ctx, "users", "1", []byte(`{"a":"\u0000"}`))
			return err
		},
		"bad collection": func(tx writer.Tx) error {
			_, err := tx.Put(ctx, "Users", "1", []byte(`{}`))
			return err
		},
		"control char id": func(tx writer.Tx) error {
			_, err := tx.Put(ctx, "users", "a\nb", []byte(`{}`))
			return err
		},
		"second op fails": func(tx writer.Tx) error {
			if _, err := tx.Put(ctx, "users", "1", []byte(`{}`)); err != nil {
				return err
			}
			_, err := tx.Patch(ctx, "users", "1", []byte(`{"a":`))
			return err
		},
	}
	for name, fn := range cases {
		_, err := b.w.Do(ctx, fn)
		require.Error(t, err, name)
		require.True(t, writer.IsInvalid(err), "%s: %v", name, err)
	}
	var n int
	require.NoError(t, b.env.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM entities) + (SELECT count(*) FROM outbox)`).Scan(&n))
	require.Zero(t, n)
	keys, err := b.env.Redis.Keys(ctx, b.env.Prefix+"*").Result()
	require.NoError(t, err)
	require.Empty(t, keys)

	// Preconditions.
	_, err = b.w.Do(ctx, func(tx writer.Tx) error {
		_, err := tx.Put(ctx, "users", "1", []byte(`{}`), writer.IfMatch(3))
		return err
	})
	require.True(t, errors.Is(err, writer.ErrPrecondition), "%v", err)
	_, err = b.w.Do(ctx, func(tx writer.Tx) error {
		_, err := tx.Delete(ctx, "users", "1")
		return err
	})
	require.ErrorIs(t, err, writer.ErrNotFound)
}

// hungRedis accepts connections and never answers, as a Redis stuck in a
// long command or behind a dead link does.
func hungRedis(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// A Redis that accepts but never answers holds a write no longer than the
// cache timeout, and a read no longer than the read timeout: the write
// reports pending, the read comes from Postgres. The client's own
// ReadTimeout (3 s by default) would be far longer.
func TestRedisHungBoundedByTimeouts(t *testing.T) {
	t.Parallel()
	env := testenv.New(t)
	ctx := context.Background()
	hung := redis.NewClient(&redis.Options{Addr: hungRedis(t), MaxRetries: -1, ContextTimeoutEnabled: true})
	t.Cleanup(func() { hung.Close() })
	f, err := fence.New(hung, fence.Config{Prefix: env.Prefix})
	require.NoError(t, err)
	w, err := writer.New(writer.Config{Pool: env.Pool, Fence: f, CacheTimeout: 100 * time.Millisecond, ReadTimeout: 100 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(w.Close)

	start := time.Now()
	res, err := w.Put(ctx, "users", "1", []byte(`{"a":1}`))
	require.NoError(t, err)
	require.Equal(t, writer.CachePending, res.CacheWrite)
	require.Less(t, time.Since(start), 2*time.Second, "the write waited on Redis past its cache timeout")

	start = time.Now()
	e, src, err := w.Get(ctx, "users", "1")
	require.NoError(t, err)
	require.Equal(t, writer.FromPostgres, src)
	require.EqualValues(t, 1, e.Version)
	require.Less(t, time.Since(start), 2*time.Second, "the read waited on Redis past its read timeout")
}

// fence.New refuses a client that would ignore the writer's deadlines.
func TestFenceRefusesClientWithoutContextTimeouts(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	t.Cleanup(func() { rdb.Close() })
	_, err := fence.New(rdb, fence.Config{})
	require.ErrorContains(t, err, "ContextTimeoutEnabled")
}

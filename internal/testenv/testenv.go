// Package testenv gives each test its own slice of the real services: a fresh
// Postgres schema (migrated), a Redis key prefix and a JetStream stream name,
// all removed when the test ends, so tests run in parallel and leave nothing
// behind.
//
// The services are found through WT_TEST_DATABASE_URL (default the `test`
// database on 127.0.0.1:5432), WT_TEST_REDIS_URL and WT_TEST_NATS_URL.
package testenv

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/internal/fence"
	"github.com/writethrough/writethrough/internal/pg"
	"github.com/writethrough/writethrough/migrations"
)

// URLs of the shared services.
func DatabaseURL() string {
	return cmp.Or(os.Getenv("WT_TEST_DATABASE_URL"), "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
}

func RedisURL() string { return cmp.Or(os.Getenv("WT_TEST_REDIS_URL"), "redis://127.0.0.1:6379/0") }

func NATSURL() string { return cmp.Or(os.Getenv("WT_TEST_NATS_URL"), "nats://127.0.0.1:4222") }

// Env is one test's share of the services.
type Env struct {
	DatabaseURL string
	Schema      string
	Pool        *pgxpool.Pool
	RedisURL    string
	Redis       *redis.Client
	Prefix      string
	Fence       *fence.Fence
	NATSURL     string
	// Stream and SubjectPrefix are unique names for the test's events; the
	// stream is deleted at the end if it was created.
	Stream        string
	SubjectPrefix string
}

// Name returns a short random lower-case name with the given start.
func Name(start string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return start + hex.EncodeToString(b)
}

// New prepares a migrated schema, a Redis prefix and stream names for t.
func New(t testing.TB) *Env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	id := Name("t")
	e := &Env{
		DatabaseURL:   DatabaseURL(),
		Schema:        "wt_" + id,
		RedisURL:      RedisURL(),
		Prefix:        "wt" + id + ":",
		NATSURL:       NATSURL(),
		Stream:        "WT_" + strings.ToUpper(id),
		SubjectPrefix: "wt" + id,
	}
	require.NoError(t, migrations.Up(ctx, e.DatabaseURL, e.Schema), "migrate test schema (is Postgres up? run `make services`)")
	pool, err := pg.Open(ctx, pg.Config{URL: e.DatabaseURL, Schema: e.Schema})
	require.NoError(t, err)
	e.Pool = pool
	t.Cleanup(func() {
		pool.Close()
		dropSchema(e.DatabaseURL, e.Schema)
	})

	opt, err := redis.ParseURL(e.RedisURL)
	require.NoError(t, err)
	opt.ContextTimeoutEnabled = true
	e.Redis = redis.NewClient(opt)
	require.NoError(t, e.Redis.Ping(ctx).Err(), "redis at %s", e.RedisURL)
	e.Fence, err = fence.New(e.Redis, fence.Config{Prefix: e.Prefix})
	require.NoError(t, err)
	t.Cleanup(func() {
		DeletePrefix(e.Redis, e.Prefix)
		e.Redis.Close()
	})
	t.Cleanup(func() {
		nc, err := nats.Connect(e.NATSURL)
		if err != nil {
			return
		}
		defer nc.Close()
		if js, err := nc.JetStream(); err == nil {
			_ = js.DeleteStream(e.Stream)
		}
	})
	return e
}

func dropSchema(url, schema string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return
	}
	defer conn.Close(ctx)
	_, _ = conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
}

// DeletePrefix removes every Redis key that starts with prefix.
func DeletePrefix(rdb redis.UniversalClient, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
		if len(keys) == 500 {
			rdb.Del(ctx, keys...)
			keys = keys[:0]
		}
	}
	if len(keys) > 0 {
		rdb.Del(ctx, keys...)
	}
}

// Eventually polls cond every 10ms until it is true or d passes.
func Eventually(t testing.TB, d time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: "+msg, append([]any{d}, args...)...)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Lazy is a message argument for Eventually that is worked out only when
// the condition has failed: the state at the deadline, not at the call.
type Lazy func() string

func (f Lazy) String() string { return f() }

// Listen returns a connection of its own, LISTENing on the relays' channel
// of the schema ("<schema>_outbox"); it is closed at cleanup.
func (e *Env) Listen(t testing.TB) *pgx.Conn {
	t.Helper()
	ctx := context.Background()
	conn, err := e.Pool.Acquire(ctx)
	require.NoError(t, err)
	listener := conn.Hijack()
	t.Cleanup(func() { _ = listener.Close(context.Background()) })
	_, err = listener.Exec(ctx, "LISTEN "+pgx.Identifier{e.Schema + "_outbox"}.Sanitize())
	require.NoError(t, err)
	return listener
}

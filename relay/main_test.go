package relay

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/writethrough/writethrough/internal/cloudevent"
	"github.com/writethrough/writethrough/internal/fence"
	"github.com/writethrough/writethrough/internal/testenv"
	"github.com/writethrough/writethrough/writer"
)

func TestMain(m *testing.M) {
	if os.Getenv("WT_TEST_LOG") == "" {
		slog.SetDefault(slog.New(slog.DiscardHandler))
	} else {
		slog.SetLogLoggerLevel(slog.LevelDebug)
	}
	goleak.VerifyTestMain(m,
		// pgxpool's background health check ends shortly after Close.
		goleak.IgnoreTopFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

type bundle struct {
	env *testenv.Env
	w   *writer.Writer
	nc  *nats.Conn
	js  jetstream.JetStream
}

func setup(t *testing.T) *bundle {
	t.Helper()
	env := testenv.New(t)
	return setupWith(t, env, env.NATSURL, env.Fence)
}

// setupWith builds the bundle against a given NATS URL and cache fence.
func setupWith(t *testing.T, env *testenv.Env, natsURL string, f *fence.Fence) *bundle {
	t.Helper()
	w, err := writer.New(writer.Config{Pool: env.Pool, Fence: f, CacheTimeout: 100 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(w.Close)
	nc, err := nats.Connect(natsURL, nats.RetryOnFailedConnect(true), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return &bundle{env: env, w: w, nc: nc, js: js}
}

func (b *bundle) config(f *fence.Fence) Config {
	if f == nil {
		f = b.env.Fence
	}
	return Config{
		Pool: b.env.Pool, Fence: f, NATS: b.nc,
		Stream: b.env.Stream, SubjectPrefix: b.env.SubjectPrefix, Source: "/test",
		PollInterval: 100 * time.Millisecond, LeaseTTL: 2 * time.Second, RepairGrace: 300 * time.Millisecond,
		RetryInitial: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond, PublishTimeout: time.Second,
		HousekeepingInterval: 200 * time.Millisecond,
	}
}

// start runs a relay for the test; it is stopped at cleanup.
func (b *bundle) start(t *testing.T, cfg Config) *Relay {
	t.Helper()
	r, err := New(cfg)
	require.NoError(t, err)
	require.NoError(t, r.Start(context.Background()))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, r.Stop(ctx))
	})
	return r
}

// kill abandons a relay the way SIGKILL would: work in flight is dropped,
// nothing is marked or released, its leases run out on their own.
func (r *Relay) kill() {
	r.killed.Store(true)
	if r.hardStop != nil {
		r.hardStop()
	}
	_ = r.Stop(context.Background())
}

type key struct{ c, id string }

// writes makes n random changes (put, patch, delete) over keys and returns
// the last version of each key.
func (b *bundle) writes(t testing.TB, n int, keys []key) {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		k := keys[rand.IntN(len(keys))]
		_, err := b.w.Do(ctx, func(tx writer.Tx) error {
			if rand.IntN(10) == 0 {
				_, err := tx.Delete(ctx, k.c, k.id)
				if err == writer.ErrNotFound {
					_, err = tx.Put(ctx, k.c, k.id, []byte(`{"n":`+strconv.Itoa(i)+`}`))
				}
				return err
			}
			_, err := tx.Put(ctx, k.c, k.id, []byte(`{"n":`+strconv.Itoa(i)+`}`))
			return err
		})
		require.NoError(t, err)
	}
}

func makeKeys(n int) []key {
	keys := make([]key, n)
	for i := range keys {
		keys[i] = key{"users", fmt.Sprintf("u%d", i)}
	}
	return keys
}

// pendingPublish counts entries whose event is not yet published.
func pendingPublish(t testing.TB, env *testenv.Env) int {
	var n int
	require.NoError(t, env.Pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE publish_state = 'pending'`).Scan(&n))
	return n
}

func countState(t testing.TB, env *testenv.Env, where string) int {
	var n int
	require.NoError(t, env.Pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE `+where).Scan(&n))
	return n
}

// readStream reads every message of the stream.
func readStream(t testing.TB, js jetstream.JetStream, stream string) []*nats.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	total := info.State.Msgs
	if total == 0 {
		return nil
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	require.NoError(t, err)
	var out []*nats.Msg
	for uint64(len(out)) < total {
		batch, err := cons.Fetch(int(min(total-uint64(len(out)), 1000)), jetstream.FetchMaxWait(5*time.Second))
		require.NoError(t, err)
		got := 0
		for m := range batch.Messages() {
			out = append(out, &nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
			got++
		}
		require.NoError(t, batch.Error())
		require.NotZero(t, got, "stream %s: read %d of %d messages", stream, len(out), total)
	}
	return out
}

// checkEvents asserts that the stream holds every committed change exactly
// once (by ce-id), in per-entity version order, matching the outbox.
func checkEvents(t testing.TB, env *testenv.Env, msgs []*nats.Msg) {
	t.Helper()
	rows, err := env.Pool.Query(context.Background(), `SELECT event_id::text, collection, entity_id, version FROM outbox ORDER BY seq`)
	require.NoError(t, err)
	want := map[string]string{}
	for rows.Next() {
		var id, c, e string
		var v int64
		require.NoError(t, rows.Scan(&id, &c, &e, &v))
		want[id] = fmt.Sprintf("%s/%s@%d", c, e, v)
	}
	require.NoError(t, rows.Err())
	seen := map[string]int{}
	last := map[string]int64{}
	for _, m := range msgs {
		ev, err := cloudevent.Decode(m)
		require.NoError(t, err)
		seen[ev.ID]++
		require.Equal(t, 1, seen[ev.ID], "event %s delivered twice", ev.ID)
		require.Equal(t, ev.ID, m.Header.Get("Nats-Msg-Id"))
		require.Equal(t, fmt.Sprintf("%s@%d", ev.EntitySubject, ev.EntityVersion), want[ev.ID], "event %s", ev.ID)
		require.Equal(t, last[ev.EntitySubject]+1, ev.EntityVersion, "%s: version %d after %d", ev.EntitySubject, ev.EntityVersion, last[ev.EntitySubject])
		last[ev.EntitySubject] = ev.EntityVersion
	}
	require.Len(t, seen, len(want), "every committed change has one event")
}

func eventually(t testing.TB, d time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	testenv.Eventually(t, d, cond, msg, args...)
}

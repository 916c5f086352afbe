package relay

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/internal/cloudevent"
	"github.com/writethrough/writethrough/internal/pg"
	"github.com/writethrough/writethrough/internal/pgbench"
	"github.com/writethrough/writethrough/internal/testenv"
	"github.com/writethrough/writethrough/outbox"
	"github.com/writethrough/writethrough/writer"
)

// benchScale returns the size of the relay benchmarks: WT_BENCH=1 runs the
// full figures (200k changes over 10k keys; 1000 writes/s for 10 s),
// WT_BENCH=quick a scaled-down run; unset skips them (make test).
func benchScale(t *testing.T) (changes, keys int, latency time.Duration) {
	switch os.Getenv("WT_BENCH") {
	case "1":
		return 200_000, 10_000, 10 * time.Second
	case "quick":
		return 20_000, 1_000, 3 * time.Second
	}
	t.Skip("set WT_BENCH=1 (or WT_BENCH=quick) to run the relay benchmarks")
	return 0, 0, 0
}

// TestBenchDrain fills the outbox with committed changes (about 10 % with a
// failed cache write) and times the relay's drain against a minimal async
// JetStream publisher of the same messages.
func TestBenchDrain(t *testing.T) {
	changes, nkeys, _ := benchScale(t)
	env := testenv.New(t)
	b := setupWith(t, env, env.NATSURL, env.Fence)
	fill(t, env, changes, nkeys)
	entries := outboxEntries(t, env)
	require.Len(t, entries, changes)

	// Reference: publish the same messages, async, window 4096, to a
	// stream of its own. Its rate varies from run to run on a small
	// machine, so it runs three times, each to a fresh stream (a stream
	// that has seen the ids would drop them as duplicates), and the median
	// counts.
	var refDurs []time.Duration
	for run := range 3 {
		refDurs = append(refDurs, referenceDrain(t, b, entries, fmt.Sprintf("%s_REF%d", env.Stream, run), fmt.Sprintf("%sref%d", env.SubjectPrefix, run)))
	}
	slices.Sort(refDurs)
	refDur := refDurs[1]

	cfg := b.config(nil)
	cfg.RepairGrace = time.Second
	start := time.Now()
	// WT_BENCH_PROFILE=file writes a CPU profile of the drain alone.
	if pf := os.Getenv("WT_BENCH_PROFILE"); pf != "" {
		f, err := os.Create(pf)
		require.NoError(t, err)
		require.NoError(t, pprof.StartCPUProfile(f))
		defer func() { pprof.StopCPUProfile(); _ = f.Close() }()
	}
	b.start(t, cfg)
	// Watch for the end without loading the database the relay works: the
	// stream's count (a small NATS request) until every event is stored,
	// then the outbox until every entry is marked. Asking Postgres every
	// 10 ms whether an entry is still due took a tenth of the machine's CPU
	// during the drain (each ask walks the due index past the entries
	// marked so far).
	eventually(t, 5*time.Minute, func() bool { return streamMsgs(t, b.js, env.Stream) >= uint64(changes) }, "events not all published")
	eventually(t, time.Minute, func() bool { return !anyDue(t, env) }, "outbox not drained")
	relayDur := time.Since(start)
	require.Zero(t, countState(t, env, `publish_state = 'pending' OR cache_state = 'pending'`))

	refRate := float64(changes) / refDur.Seconds()
	relayRate := float64(changes) / relayDur.Seconds()
	t.Logf("drain %d changes over %d keys (10%% repaired): relay %s = %.0f events/s; reference async publisher %s = %.0f events/s; ratio %.2f (target >= 0.4)",
		changes, nkeys, relayDur.Round(time.Millisecond), relayRate, refDur.Round(time.Millisecond), refRate, relayRate/refRate)
	fmt.Printf("BENCH drain: relay %.0f events/s, reference %.0f events/s, ratio %.2f\n", relayRate, refRate, relayRate/refRate)
}

// referenceDrain publishes the entries' events with a minimal async
// JetStream publisher to a stream of its own and returns how long it took.
func referenceDrain(t *testing.T, b *bundle, entries []*outbox.Entry, stream, prefix string) time.Duration {
	ctx := context.Background()
	_, err := b.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: stream, Subjects: []string{prefix + ".>"}, Duplicates: 2 * time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.js.DeleteStream(context.Background(), stream) })
	refJS, err := jetstream.New(b.nc, jetstream.WithPublishAsyncMaxPending(4096))
	require.NoError(t, err)
	msgs := make([]*nats.Msg, len(entries))
	for i, e := range entries {
		msgs[i] = cloudevent.Encode(e, "/bench", prefix)
	}
	start := time.Now()
	futures := make([]jetstream.PubAckFuture, 0, len(msgs))
	for _, m := range msgs {
		f, err := refJS.PublishMsgAsync(m)
		require.NoError(t, err)
		futures = append(futures, f)
	}
	<-refJS.PublishAsyncComplete()
	took := time.Since(start)
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatalf("reference publish: %v", err)
		}
	}
	return took
}

// streamMsgs returns how many messages the stream stores (0 before it
// exists).
func streamMsgs(t *testing.T, js jetstream.JetStream, stream string) uint64 {
	s, err := js.Stream(context.Background(), stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0
	}
	require.NoError(t, err)
	return s.CachedInfo().State.Msgs // as fetched by js.Stream
}

// anyDue reports whether some outbox entry still needs work.
func anyDue(t *testing.T, env *testenv.Env) bool {
	var due bool
	require.NoError(t, env.Pool.QueryRow(context.Background(),
		`SELECT EXISTS (SELECT 1 FROM outbox WHERE publish_state = 'pending' OR cache_state = 'pending')`).Scan(&due))
	return due
}

// fill commits changes over nkeys keys straight into entities and outbox,
// as the writer would have; every tenth key's changes need a cache repair.
func fill(t *testing.T, env *testenv.Env, changes, nkeys int) {
	ctx := context.Background()
	per := changes / nkeys
	cols, ids := make([]string, nkeys), make([]string, nkeys)
	parts := make([]int32, nkeys)
	for i := range nkeys {
		cols[i], ids[i] = "items", "k"+strconv.Itoa(i)
		parts[i] = int32(outbox.PartitionOf(cols[i], ids[i]))
	}
	_, err := env.Pool.Exec(ctx, `
INSERT INTO entities (collection, id, version, data, updated_at)
SELECT c, i, $3::bigint, jsonb_build_object('n', $3::bigint, 'pad', repeat('x', 100)), now() - interval '1 minute'
FROM unnest($1::text[], $2::text[]) AS k(c, i)`, cols, ids, per)
	require.NoError(t, err)
	_, err = env.Pool.Exec(ctx, `
INSERT INTO outbox (event_id, part, collection, entity_id, version, op, data, committed_at, cache_state)
SELECT gen_random_uuid(), k.p, k.c, k.i, v, 'put', jsonb_build_object('n', v, 'pad', repeat('x', 100)),
       now() - interval '1 minute' + v * interval '1 millisecond',
       CASE WHEN k.n % 10 = 0 THEN 'pending' ELSE 'done' END
FROM generate_series(1, $4::int) AS v, unnest($1::text[], $2::text[], $3::int[]) WITH ORDINALITY AS k(c, i, p, n)
ORDER BY v, k.n`, cols, ids, parts, per)
	require.NoError(t, err)
	_, err = env.Pool.Exec(ctx, `ANALYZE outbox`)
	require.NoError(t, err)
}

// TestBenchLatency writes at a steady 1000 changes/s, through a writer and
// a relay in one process as `serve` runs them, and measures, in a
// subscriber, the time from each event's ce-time to its arrival.
func TestBenchLatency(t *testing.T) {
	_, _, dur := benchScale(t)
	b := setup(t)
	ctx := context.Background()
	// The relay gets a pool of its own, as a relay process would; the
	// writers' 32 concurrent transactions would otherwise queue it.
	pool, err := pg.Open(ctx, pg.Config{URL: b.env.DatabaseURL, Schema: b.env.Schema, MaxConns: 8})
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	r := b.start(t, Config{
		Pool: pool, Fence: b.env.Fence, NATS: b.nc,
		Stream: b.env.Stream, SubjectPrefix: b.env.SubjectPrefix, Source: "/bench",
	})
	// The writer wakes the relay of its process directly, as serve's do.
	w, err := writer.New(writer.Config{Pool: b.env.Pool, Fence: b.env.Fence, LocalRelay: r})
	require.NoError(t, err)
	defer w.Close()
	// A plain subscriber on the event subjects: it sees each event as the
	// relay publishes it to the stream. Events of the warm-up (committed
	// before measureFrom) are not counted: it opens the pools' connections
	// and fills the caches of a fresh process, which a steady rate is not.
	const rate, warmup = 1000, 2 * time.Second
	measureFrom := time.Now().Add(warmup)
	var mu sync.Mutex
	var lat, writes []time.Duration
	sub, err := b.nc.Subscribe(b.env.SubjectPrefix+".>", func(m *nats.Msg) {
		at := time.Now()
		ts, err := time.Parse(outbox.TimeFormat, m.Header.Get(cloudevent.HeaderTime))
		if err != nil || ts.Before(measureFrom) {
			return
		}
		mu.Lock()
		lat = append(lat, at.Sub(ts))
		mu.Unlock()
	})
	require.NoError(t, err)
	defer func() { _ = sub.Unsubscribe() }()

	n := int((warmup + dur).Seconds() * rate)
	keys := makeKeys(1000)
	tick := time.NewTicker(time.Second / rate)
	defer tick.Stop()
	var wg sync.WaitGroup
	var measured atomic.Int64 // writes committed from measureFrom on
	sem := make(chan struct{}, 32)
	for i := range n {
		<-tick.C
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			k := keys[i%len(keys)]
			began := time.Now()
			res, err := w.Put(ctx, k.c, k.id, []byte(`{"i":`+strconv.Itoa(i)+`}`))
			if err != nil {
				t.Error(err)
				return
			}
			if !res.Changes[0].UpdatedAt.Before(measureFrom) {
				measured.Add(1)
				mu.Lock()
				writes = append(writes, time.Since(began))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	total := int(measured.Load())
	eventually(t, 30*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(lat) >= total }, "every event arrived")
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1))] }
	t.Logf("latency over %d events at %d writes/s after %s of warm-up: p50 %s p90 %s p99 %s max %s (target p99 <= 10ms)",
		len(lat), rate, warmup, q(0.5), q(0.9), q(0.99), lat[len(lat)-1])
	slices.Sort(writes)
	t.Logf("the writes themselves (commit and cache write): p50 %s p99 %s max %s",
		writes[len(writes)/2], writes[len(writes)*99/100], writes[len(writes)-1])
	var dbP50, dbP99 float64
	require.NoError(t, b.env.Pool.QueryRow(ctx, `SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM published_at - committed_at)), percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM published_at - committed_at)) FROM outbox WHERE committed_at >= $1`, measureFrom).Scan(&dbP50, &dbP99))
	t.Logf("commit-to-mark (database clock): p50 %.1fms p99 %.1fms", dbP50*1000, dbP99*1000)
	fmt.Printf("BENCH latency: p50 %s p99 %s max %s\n", q(0.5), q(0.99), lat[len(lat)-1])

	// The database's share, for scale: pgbench running the writer's SQL at
	// the same rate, alone, in a schema of its own. ce-time is stamped
	// before the commit, so no event can arrive sooner than its commit ends.
	if _, err := exec.LookPath("pgbench"); err != nil {
		t.Log("pgbench not found: no database floor")
		return
	}
	mu.Unlock()
	defer mu.Lock()
	floorEnv := testenv.New(t)
	floor, err := pgbench.Runner{
		URL: floorEnv.DatabaseURL, Schema: floorEnv.Schema, Dir: t.TempDir(),
		Keys: len(keys), Collection: "users", Body: `{"i":1}`,
	}.RunAtRate(ctx, 8, rate, dur)
	require.NoError(t, err)
	t.Logf("database floor: pgbench with the writer's SQL at %d tps: p50 %s p99 %s", rate, floor.P50, floor.P99)
	fmt.Printf("BENCH latency floor: pgbench at %d tps p50 %s p99 %s\n", rate, floor.P50, floor.P99)
}

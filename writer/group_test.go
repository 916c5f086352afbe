package writer_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/internal/testenv"
	"github.com/writethrough/writethrough/writer"
)

// lockKeys creates the entities and holds their row locks in a transaction
// of its own until the returned release is called, as a long transaction
// elsewhere would.
func lockKeys(t *testing.T, b *bundle, ids ...string) (release func(), blocked func() int) {
	t.Helper()
	ctx := context.Background()
	for _, id := range ids {
		_, err := b.w.Put(ctx, "gate", id, []byte(`{}`))
		require.NoError(t, err)
	}
	tx, err := b.env.Pool.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `SELECT 1 FROM entities WHERE collection = 'gate' AND id = ANY($1) FOR UPDATE`, ids)
	require.NoError(t, err)
	var holder int
	require.NoError(t, tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&holder))
	var once sync.Once
	release = func() { once.Do(func() { require.NoError(t, tx.Rollback(ctx)) }) }
	t.Cleanup(release)
	blocked = func() int {
		var n int
		require.NoError(t, b.env.Pool.QueryRow(ctx,
			`SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))`, holder).Scan(&n))
		return n
	}
	return release, blocked
}

// blockGroups fills every group slot with a write held up by a row lock, so
// the writes that follow queue; release lets them go.
func blockGroups(t *testing.T, b *bundle) (release func(), wait func()) {
	t.Helper()
	writer.SetGroupStall(b.w, time.Hour)
	release, blocked := lockKeys(t, b, "1", "2")
	var wg sync.WaitGroup
	for _, id := range []string{"1", "2"} {
		wg.Go(func() {
			_, err := b.w.Put(context.Background(), "gate", id, []byte(`{"held":true}`))
			require.NoError(t, err)
		})
	}
	waitFor(t, func() bool { return blocked() == 2 })
	return release, wg.Wait
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, cond, "condition not reached")
}

// Writes that queue behind busy groups commit together in one transaction,
// and each still gets its own version, outbox entry and cache hash.
func TestGroupedWritesShareOneTransaction(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	release, wait := blockGroups(t, b)

	const n = 12
	var wg sync.WaitGroup
	results := make([]writer.Result, n)
	for i := range n {
		wg.Go(func() {
			var err error
			results[i], err = b.w.Put(ctx, "users", strconv.Itoa(i), fmt.Appendf(nil, `{"n":%d}`, i))
			require.NoError(t, err)
		})
	}
	waitFor(t, func() bool { return writer.GroupQueued(b.w) == n })
	release()
	wg.Wait()
	wait()

	for i, res := range results {
		require.Len(t, res.Changes, 1)
		require.EqualValues(t, 1, res.Changes[0].Version)
		require.Equal(t, writer.CacheOK, res.CacheWrite)
		id := strconv.Itoa(i)
		rows := outboxRows(t, b, "users", id)
		require.Len(t, rows, 1)
		require.Equal(t, res.Changes[0].EventID, rows[0].EventID)
		h, err := b.env.Redis.HGetAll(ctx, b.env.Prefix+"users:"+id).Result()
		require.NoError(t, err)
		require.Equal(t, "1", h["v"])
		require.JSONEq(t, fmt.Sprintf(`{"n":%d}`, i), h["d"])
	}
	var txs int
	require.NoError(t, b.env.Pool.QueryRow(ctx, `SELECT count(DISTINCT xmin::text) FROM outbox WHERE collection = 'users'`).Scan(&txs))
	require.Equal(t, 1, txs, "the queued writes were not committed as one group")
}

// One write that Postgres rejects fails alone: its group is rolled back and
// every other write of it commits on its own.
func TestGroupedWriteFailureIsolated(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	release, wait := blockGroups(t, b)

	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			data := fmt.Appendf(nil, `{"n":%d}`, i)
			if i == 3 {
				data = []byte(`{"n":"\u0000"}`) // valid JSON that jsonb refuses
			}
			_, errs[i] = b.w.Put(ctx, "users", strconv.Itoa(i), data)
		})
	}
	waitFor(t, func() bool { return writer.GroupQueued(b.w) == n })
	release()
	wg.Wait()
	wait()

	for i, err := range errs {
		id := strconv.Itoa(i)
		if i == 3 {
			var ie *writer.InvalidError
			require.ErrorAs(t, err, &ie)
			require.Empty(t, outboxRows(t, b, "users", id))
			n, err := b.env.Redis.Exists(ctx, b.env.Prefix+"users:"+id).Result()
			require.NoError(t, err)
			require.Zero(t, n)
			continue
		}
		require.NoError(t, err, "write %d", i)
		rows := outboxRows(t, b, "users", id)
		require.Len(t, rows, 1)
		require.EqualValues(t, 1, rows[0].Version)
	}
	var entities int
	require.NoError(t, b.env.Pool.QueryRow(ctx, `SELECT count(*) FROM entities WHERE collection = 'users'`).Scan(&entities))
	require.Equal(t, n-1, entities)
}

// A group held up by a row lock elsewhere stops holding back new groups
// after a moment, so writes to other keys go on meanwhile; more writes to a
// held key wait without holding up anyone else.
func TestStalledGroupDoesNotHoldBackOthers(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	release, blocked := lockKeys(t, b, "1", "2")
	var held sync.WaitGroup
	for _, id := range []string{"1", "2", "1", "2"} {
		held.Go(func() {
			_, err := b.w.Put(ctx, "gate", id, []byte(`{"held":true}`))
			require.NoError(t, err)
		})
	}
	waitFor(t, func() bool { return blocked() == 2 })

	done := make(chan error, 1)
	go func() {
		var err error
		for i := range 20 {
			if _, err = b.w.Put(ctx, "users", strconv.Itoa(i), []byte(`{}`)); err != nil {
				break
			}
		}
		done <- err
	}()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("writes to free keys waited for a row lock of other keys")
	}
	release()
	held.Wait()
	var v int64
	require.NoError(t, b.env.Pool.QueryRow(ctx, `SELECT version FROM entities WHERE collection = 'gate' AND id = '1'`).Scan(&v))
	require.EqualValues(t, 3, v)
}

// A write whose context ends while it waits in the queue commits nothing.
func TestQueuedWriteCanceled(t *testing.T) {
	b := setup(t)
	release, wait := blockGroups(t, b)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := b.w.Put(ctx, "users", "gone", []byte(`{}`))
		errc <- err
	}()
	waitFor(t, func() bool { return writer.GroupQueued(b.w) == 1 })
	cancel()
	require.ErrorIs(t, <-errc, writer.ErrUnavailable)
	require.Zero(t, writer.GroupQueued(b.w))
	release()
	wait()
	err := b.env.Pool.QueryRow(context.Background(), `SELECT 1 FROM entities WHERE collection = 'users' AND id = 'gone'`).Scan(new(int))
	require.ErrorIs(t, err, pgx.ErrNoRows)
}

// Writes of every kind queued into one group each get the answer they would
// get on their own: preconditions hit and miss, deletes of live and missing
// entities, creates; only the changes that happened reach the outbox and
// the cache.
func TestGroupedMixedWritesKeepTheirOwnAnswers(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	for _, id := range []string{"a", "b", "d"} {
		_, err := b.w.Put(ctx, "users", id, []byte(`{"v":1}`))
		require.NoError(t, err)
	}
	release, wait := blockGroups(t, b)

	type answer struct {
		res writer.Result
		err error
	}
	writes := map[string]func() (writer.Result, error){
		"a": func() (writer.Result, error) { return b.w.Put(ctx, "users", "a", []byte(`{"v":2}`), writer.IfMatch(1)) },
		"b": func() (writer.Result, error) { return b.w.Put(ctx, "users", "b", []byte(`{"v":2}`), writer.IfMatch(5)) },
		"d": func() (writer.Result, error) { return b.w.Delete(ctx, "users", "d") },
		"e": func() (writer.Result, error) { return b.w.Delete(ctx, "users", "e") },
		"f": func() (writer.Result, error) { return b.w.Put(ctx, "users", "f", []byte(`{"v":1}`), writer.IfAbsent()) },
		"g": func() (writer.Result, error) { return b.w.Put(ctx, "users", "g", []byte(`{"v":1}`)) },
	}
	answers := make(map[string]answer)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for id, write := range writes {
		wg.Go(func() {
			res, err := write()
			mu.Lock()
			answers[id] = answer{res, err}
			mu.Unlock()
		})
	}
	waitFor(t, func() bool { return writer.GroupQueued(b.w) == len(writes) })
	release()
	wg.Wait()
	wait()

	require.NoError(t, answers["a"].err)
	require.EqualValues(t, 2, answers["a"].res.Changes[0].Version)
	require.ErrorIs(t, answers["b"].err, writer.ErrPrecondition)
	require.NoError(t, answers["d"].err)
	require.True(t, answers["d"].res.Changes[0].Deleted)
	require.ErrorIs(t, answers["e"].err, writer.ErrNotFound)
	require.NoError(t, answers["f"].err)
	require.True(t, answers["f"].res.Changes[0].Created)
	require.NoError(t, answers["g"].err)

	for id, want := range map[string]struct {
		entries int
		v       string
		d       string // "" for a tombstone
	}{"a": {2, "2", `{"v": 2}`}, "b": {1, "1", `{"v": 1}`}, "d": {2, "2", ""}, "f": {1, "1", `{"v": 1}`}, "g": {1, "1", `{"v": 1}`}} {
		require.Len(t, outboxRows(t, b, "users", id), want.entries, id)
		h, err := b.env.Redis.HGetAll(ctx, b.env.Prefix+"users:"+id).Result()
		require.NoError(t, err)
		require.Equal(t, want.v, h["v"], id)
		if want.d == "" {
			require.NotContains(t, h, "d", id)
		} else {
			require.JSONEq(t, want.d, h["d"], id)
		}
	}
	require.Empty(t, outboxRows(t, b, "users", "e"))
	var txs int
	require.NoError(t, b.env.Pool.QueryRow(ctx,
		`SELECT count(DISTINCT xmin::text) FROM outbox WHERE collection = 'users' AND version = CASE WHEN entity_id IN ('a', 'd') THEN 2 ELSE 1 END AND entity_id IN ('a', 'd', 'f', 'g')`).Scan(&txs))
	require.Equal(t, 1, txs, "the queued writes were not committed as one group")
}

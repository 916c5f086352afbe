package writer_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/outbox"
	"github.com/writethrough/writethrough/writer"
)

// outboxRow is what the outbox holds for one change.
type outboxRow struct {
	EventID, Op, Data, Committed string
	Version                      int64
	Part                         int
	Traceparent                  *string
}

func outboxRows(t *testing.T, b *bundle, collection, id string) []outboxRow {
	t.Helper()
	rows, err := b.env.Pool.Query(context.Background(), `
SELECT event_id::text, op, coalesce(data::text, ''), to_char(committed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), version, part, traceparent
FROM outbox WHERE collection = $1 AND entity_id = $2 ORDER BY version`, collection, id)
	require.NoError(t, err)
	defer rows.Close()
	var out []outboxRow
	for rows.Next() {
		var r outboxRow
		require.NoError(t, rows.Scan(&r.EventID, &r.Op, &r.Data, &r.Committed, &r.Version, &r.Part, &r.Traceparent))
		out = append(out, r)
	}
	require.NoError(t, rows.Err())
	return out
}

// TestOneChangeWritesMatchDo runs the same sequence of writes through
// Writer.Put/Delete (one round trip) and through Do (the oracle) on two keys,
// and compares every answer, entity row, outbox entry and Redis hash.
func TestOneChangeWritesMatchDo(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	type step struct {
		del   bool
		data  string
		conds func(v int64) []writer.Condition
	}
	none := func(int64) []writer.Condition { return nil }
	steps := []step{
		{data: `{"a":1}`, conds: none}, // create
		{data: `{"a":2}`, conds: none}, // replace
		{data: `{"a":3}`, conds: func(v int64) []writer.Condition { return []writer.Condition{writer.IfMatch(v)} }},     // If-Match hit
		{data: `{"a":4}`, conds: func(v int64) []writer.Condition { return []writer.Condition{writer.IfMatch(v + 7)} }}, // If-Match miss
		{data: `{"a":5}`, conds: func(int64) []writer.Condition { return []writer.Condition{writer.IfAbsent()} }},       // exists: miss
		{data: `{"a":6}`, conds: func(int64) []writer.Condition { return []writer.Condition{writer.IfExists()} }},
		{del: true, conds: func(v int64) []writer.Condition { return []writer.Condition{writer.IfMatch(v + 1)} }}, // miss
		{del: true, conds: none},
		{del: true, conds: none}, // nothing to delete: not found
		{data: `{"a":7}`, conds: func(int64) []writer.Condition { return []writer.Condition{writer.IfExists()} }}, // deleted: miss
		{data: `{"a":8}`, conds: func(int64) []writer.Condition { return []writer.Condition{writer.IfAbsent()} }}, // re-create
		{data: `{"a":9}`, conds: func(int64) []writer.Condition {
			return []writer.Condition{writer.IfAbsent(), writer.IfExists()} // contradictory
		}},
		{del: true, conds: func(int64) []writer.Condition { return []writer.Condition{writer.IfAbsent()} }},
		{data: `[1, 2.50, {"z": null,  "b":true}]`, conds: none},
		{data: `not json`, conds: none},
	}
	one, oracle := "one", "do"
	var vOne, vDo int64
	for i, s := range steps {
		var resOne, resDo writer.Result
		var errOne, errDo error
		if s.del {
			resOne, errOne = b.w.Delete(ctx, "docs", one, s.conds(vOne)...)
			resDo, errDo = b.w.Do(ctx, func(tx writer.Tx) error {
				_, err := tx.Delete(ctx, "docs", oracle, s.conds(vDo)...)
				return err
			})
		} else {
			resOne, errOne = b.w.Put(ctx, "docs", one, []byte(s.data), s.conds(vOne)...)
			resDo, errDo = b.w.Do(ctx, func(tx writer.Tx) error {
				_, err := tx.Put(ctx, "docs", oracle, []byte(s.data), s.conds(vDo)...)
				return err
			})
		}
		name := fmt.Sprintf("step %d", i)
		require.Equal(t, errDo == nil, errOne == nil, "%s: %v vs %v", name, errOne, errDo)
		if errDo != nil {
			for _, target := range []error{writer.ErrPrecondition, writer.ErrNotFound} {
				require.Equal(t, errors.Is(errDo, target), errors.Is(errOne, target), "%s: %v vs %v", name, errOne, errDo)
			}
			require.Equal(t, writer.IsInvalid(errDo), writer.IsInvalid(errOne), name)
			continue
		}
		require.Equal(t, resDo.CacheWrite, resOne.CacheWrite, name)
		require.Len(t, resOne.Changes, 1, name)
		co, cd := resOne.Changes[0], resDo.Changes[0]
		require.Equal(t, cd.Version, co.Version, name)
		require.Equal(t, cd.Created, co.Created, name)
		require.Equal(t, cd.Deleted, co.Deleted, name)
		require.Equal(t, string(cd.Data), string(co.Data), name)
		require.Equal(t, one, co.ID, name)
		vOne, vDo = co.Version, cd.Version
	}

	// The outbox holds exactly one entry per committed change, the same as
	// Do's, and each agrees with the answer the write gave.
	rowsOne, rowsDo := outboxRows(t, b, "docs", one), outboxRows(t, b, "docs", oracle)
	require.Len(t, rowsOne, len(rowsDo))
	require.NotEmpty(t, rowsOne)
	for i := range rowsOne {
		o, d := rowsOne[i], rowsDo[i]
		require.Equal(t, d.Version, o.Version)
		require.Equal(t, d.Op, o.Op)
		require.Equal(t, d.Data, o.Data)
		require.Nil(t, o.Traceparent)
		require.NotEqual(t, d.EventID, o.EventID)
	}
	var v int64
	var data *string
	var updated string
	require.NoError(t, b.env.Pool.QueryRow(ctx, `SELECT version, data::text, to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') FROM entities WHERE collection = 'docs' AND id = $1`, one).Scan(&v, &data, &updated))
	last := rowsOne[len(rowsOne)-1]
	require.Equal(t, last.Version, v)
	require.Equal(t, last.Committed, updated)
	require.Equal(t, last.Data, *data)

	for _, id := range []string{one, oracle} {
		h, err := b.env.Redis.HGetAll(ctx, b.env.Prefix+"docs:"+id).Result()
		require.NoError(t, err)
		require.Equal(t, fmt.Sprint(v), h["v"])
		require.Equal(t, *data, h["d"])
	}
}

// TestOneChangeEventIDAndPartition checks the entry a one-change write
// records against what the write answered.
func TestOneChangeEventIDAndPartition(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	res, err := b.w.Put(ctx, "orders", "o-1", []byte(`{"total":12}`))
	require.NoError(t, err)
	rows := outboxRows(t, b, "orders", "o-1")
	require.Len(t, rows, 1)
	require.Equal(t, res.Changes[0].EventID, rows[0].EventID)
	require.Equal(t, res.Changes[0].UpdatedAt.UTC().Format("2006-01-02T15:04:05.000000Z"), rows[0].Committed)

	require.Equal(t, outbox.PartitionOf("orders", "o-1"), rows[0].Part)
	require.Equal(t, "put", rows[0].Op)

	// Bad keys are rejected before anything is sent.
	_, err = b.w.Put(ctx, "bad name!", "x", []byte(`{}`))
	require.True(t, writer.IsInvalid(err), "%v", err)
	_, err = b.w.Delete(ctx, "orders", "")
	require.True(t, writer.IsInvalid(err), "%v", err)
	require.Empty(t, outboxRows(t, b, "bad name!", "x"))
}

// TestOneChangeConcurrentVersions: concurrent one-change writes to one key
// each get their own version, and the outbox has one entry per version.
func TestOneChangeConcurrentVersions(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	const writers, each = 8, 25
	var wg sync.WaitGroup
	versions := make(chan int64, writers*each)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				res, err := b.w.Put(ctx, "hot", "k", []byte(fmt.Sprintf(`{"w":%d,"i":%d}`, w, i)))
				if err != nil {
					t.Error(err)
					return
				}
				versions <- res.Changes[0].Version
			}
		})
	}
	wg.Wait()
	close(versions)
	seen := map[int64]bool{}
	for v := range versions {
		require.False(t, seen[v], "version %d answered twice", v)
		seen[v] = true
	}
	require.Len(t, seen, writers*each)
	rows := outboxRows(t, b, "hot", "k")
	require.Len(t, rows, writers*each)
	for i, r := range rows {
		require.EqualValues(t, i+1, r.Version)
	}
	h, err := b.env.Redis.HGetAll(ctx, b.env.Prefix+"hot:k").Result()
	require.NoError(t, err)
	require.Equal(t, fmt.Sprint(writers*each), h["v"])
	require.Equal(t, rows[len(rows)-1].Data, h["d"])
}

// TestWriteNotifiesItsPartitions: after a commit the relays are woken with
// the partitions of the keys it changed.
func TestWriteNotifiesItsPartitions(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	listener := b.env.Listen(t)

	_, err := b.w.Put(ctx, "users", "7", []byte(`{}`))
	require.NoError(t, err)
	n, err := listener.WaitForNotification(ctx)
	require.NoError(t, err)
	require.Equal(t, outbox.PartSet(0).With(outbox.PartitionOf("users", "7")), outbox.ParsePartSet(n.Payload), "payload %q", n.Payload)

	// A transaction of several keys names each of their partitions.
	_, err = b.w.Do(ctx, func(tx writer.Tx) error {
		if _, err := tx.Put(ctx, "users", "8", []byte(`{}`)); err != nil {
			return err
		}
		_, err := tx.Put(ctx, "orders", "9", []byte(`{}`))
		return err
	})
	require.NoError(t, err)
	want := outbox.PartSet(0).With(outbox.PartitionOf("users", "8")).With(outbox.PartitionOf("orders", "9"))
	var got outbox.PartSet
	for got != want {
		n, err := listener.WaitForNotification(ctx)
		require.NoError(t, err)
		got |= outbox.ParsePartSet(n.Payload)
		require.Zero(t, got&^want, "payload %q names other partitions", n.Payload)
	}
}

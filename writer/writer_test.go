package writer_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/internal/testenv"
	"github.com/writethrough/writethrough/writer"
)

type bundle struct {
	env *testenv.Env
	w   *writer.Writer
}

func setup(t *testing.T) *bundle {
	t.Helper()
	env := testenv.New(t)
	w, err := writer.New(writer.Config{Pool: env.Pool, Fence: env.Fence})
	require.NoError(t, err)
	t.Cleanup(w.Close)
	return &bundle{env: env, w: w}
}

func TestPutCommitsRowOutboxAndCache(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	res, err := b.w.Do(ctx, func(tx writer.Tx) error {
		_, err := tx.Put(ctx, "users", "42", []byte(`{"name":"Ada"}`))
		return err
	})
	require.NoError(t, err)
	require.Equal(t, writer.CacheOK, res.CacheWrite)
	require.Len(t, res.Changes, 1)
	ch := res.Changes[0]
	require.EqualValues(t, 1, ch.Version)
	require.True(t, ch.Created)
	require.Equal(t, `{"name": "Ada"}`, string(ch.Data))

	var v int64
	var d string
	require.NoError(t, b.env.Pool.QueryRow(ctx, `SELECT version, data::text FROM entities WHERE collection='users' AND id='42'`).Scan(&v, &d))
	require.EqualValues(t, 1, v)
	require.Equal(t, `{"name": "Ada"}`, d)

	var ov int64
	var op, eid string
	require.NoError(t, b.env.Pool.QueryRow(ctx, `SELECT version, op, event_id::text FROM outbox WHERE collection='users' AND entity_id='42'`).Scan(&ov, &op, &eid))
	require.EqualValues(t, 1, ov)
	require.Equal(t, "put", op)
	require.Equal(t, ch.EventID, eid)

	h, err := b.env.Redis.HGetAll(ctx, b.env.Prefix+"users:42").Result()
	require.NoError(t, err)
	require.Equal(t, "1", h["v"])
	require.Equal(t, `{"name": "Ada"}`, h["d"])
	require.Equal(t, ch.Representation(), (&writer.Entity{Collection: "users", ID: "42", Version: 1, Data: []byte(h["d"]), UpdatedAt: h["u"]}).Representation())

	// Delete leaves a tombstone with the version and no data.
	res, err = b.w.Do(ctx, func(tx writer.Tx) error {
		_, err := tx.Delete(ctx, "users", "42")
		return err
	})
	require.NoError(t, err)
	require.EqualValues(t, 2, res.Changes[0].Version)
	h, err = b.env.Redis.HGetAll(ctx, b.env.Prefix+"users:42").Result()
	require.NoError(t, err)
	require.Equal(t, "2", h["v"])
	_, hasD := h["d"]
	require.False(t, hasD)

	// Re-create continues the sequence.
	res, err = b.w.Do(ctx, func(tx writer.Tx) error {
		_, err := tx.Put(ctx, "users", "42", []byte(`[1, 2.50]`))
		return err
	})
	require.NoError(t, err)
	require.EqualValues(t, 3, res.Changes[0].Version)
	require.True(t, res.Changes[0].Created)
	require.Equal(t, `[1, 2.50]`, string(res.Changes[0].Data))
}

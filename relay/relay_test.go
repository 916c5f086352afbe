package relay

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/internal/cloudevent"
	"github.com/writethrough/writethrough/outbox"
	"github.com/writethrough/writethrough/writer"
)

func TestPublishesEveryChangeInVersionOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.start(t, b.config(nil))
	keys := makeKeys(20)
	b.writes(t, 300, keys)
	eventually(t, 10*time.Second, func() bool { return pendingPublish(t, b.env) == 0 }, "all events published")
	msgs := readStream(t, b.js, b.env.Stream)
	checkEvents(t, b.env, msgs)

	// Headers of one event against its outbox row.
	var e outbox.Entry
	var data *string
	require.NoError(t, b.env.Pool.QueryRow(context.Background(), `SELECT event_id, collection, entity_id, version, op, data::text, committed_at FROM outbox ORDER BY seq DESC LIMIT 1`).
		Scan(&e.EventID, &e.Collection, &e.EntityID, &e.Version, &e.Op, &data, &e.CommittedAt))
	if data != nil {
		e.Data = []byte(*data)
	}
	var last *nats.Msg
	for _, m := range msgs {
		if m.Header.Get("ce-id") == e.EventID.String() {
			last = m
		}
	}
	require.NotNil(t, last, "event of the last change")
	ev, err := cloudevent.Decode(last)
	require.NoError(t, err)
	require.Equal(t, e.EventID.String(), ev.ID)
	require.Equal(t, "/test", ev.Source)
	require.Equal(t, cloudevent.Type(e.Op), ev.Type)
	require.Equal(t, outbox.FormatTime(e.CommittedAt), ev.Time)
	require.Equal(t, "application/json", ev.ContentType)
	require.Equal(t, string(e.Representation()), string(last.Data))
	require.Equal(t, b.env.SubjectPrefix+".users."+string(e.Op), last.Subject)
}

func TestRepairsFromCurrentRow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	put := func(data string) writer.Change {
		res, err := b.w.Do(ctx, func(tx writer.Tx) error {
			_, err := tx.Put(ctx, "docs", "d1", []byte(data))
			return err
		})
		require.NoError(t, err)
		return res.Changes[0]
	}
	put(`{"a": 1}`)
	last := put(`{"a": 2}`)
	// Pretend both cache writes failed and Redis lost the key.
	_, err := b.env.Pool.Exec(ctx, `UPDATE outbox SET cache_state = 'pending'`)
	require.NoError(t, err)
	require.NoError(t, b.env.Redis.Del(ctx, b.env.Prefix+"docs:d1").Err())

	b.start(t, b.config(nil))
	eventually(t, 5*time.Second, func() bool { return countState(t, b.env, `cache_state = 'pending'`) == 0 }, "repaired entries marked")
	h, err := b.env.Redis.HGetAll(ctx, b.env.Prefix+"docs:d1").Result()
	require.NoError(t, err)
	require.Equal(t, "2", h["v"])
	require.Equal(t, `{"a": 2}`, h["d"])
	require.Equal(t, outbox.FormatTime(last.UpdatedAt), h["u"])
}

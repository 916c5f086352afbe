package relay

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
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

// startOnStream creates the test's stream as sc says, then starts a relay
// with the given duplicate window and requires it to find the stream usable.
func (b *bundle) startOnStream(t *testing.T, sc jetstream.StreamConfig, window time.Duration) {
	t.Helper()
	sc.Name = b.env.Stream
	_, err := b.js.CreateStream(context.Background(), sc)
	require.NoError(t, err)
	cfg := b.config(nil)
	cfg.DuplicateWindow = window
	require.NoError(t, b.start(t, cfg).StreamError())
}

// An existing stream keeps the settings an operator gave it; the relay only
// adds its subjects and sets the duplicate window.
func TestExistingStreamKeepsOperatorSettings(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.startOnStream(t, jetstream.StreamConfig{
		Subjects: []string{b.env.SubjectPrefix + "_other.>"}, Storage: jetstream.MemoryStorage,
		MaxAge: 48 * time.Hour, MaxMsgs: 1_000_000, Description: "tuned by on-call", Duplicates: 5 * time.Minute,
	}, 3*time.Minute)

	s, err := b.js.Stream(ctx, b.env.Stream)
	require.NoError(t, err)
	got := s.CachedInfo().Config
	require.Equal(t, jetstream.MemoryStorage, got.Storage)
	require.Equal(t, 48*time.Hour, got.MaxAge)
	require.EqualValues(t, 1_000_000, got.MaxMsgs)
	require.Equal(t, "tuned by on-call", got.Description)
	require.Equal(t, 3*time.Minute, got.Duplicates)
	require.ElementsMatch(t, []string{b.env.SubjectPrefix + "_other.>", b.env.SubjectPrefix + ".>"}, got.Subjects)

	// And events flow into it.
	keys := makeKeys(3)
	b.writes(t, 6, keys)
	eventually(t, 10*time.Second, func() bool { return pendingPublish(t, b.env) == 0 }, "all events published")
	checkEvents(t, b.env, readStream(t, b.js, b.env.Stream))
}

// A stream the relay cannot bring to what it needs is reported.
func TestStreamErrorReported(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	// Another stream already takes the relay's subjects.
	other := b.env.Stream + "_TAKEN"
	_, err := b.js.CreateStream(ctx, jetstream.StreamConfig{Name: other, Subjects: []string{b.env.SubjectPrefix + ".>"}, Storage: jetstream.MemoryStorage})
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.js.DeleteStream(context.Background(), other) })
	r := b.start(t, b.config(nil))
	require.ErrorContains(t, r.StreamError(), b.env.Stream)
}

// A stream that refuses the configured duplicate window (longer than its
// max age) still takes the events, with its own window.
func TestStreamRefusingWindowStillTakesEvents(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.startOnStream(t, jetstream.StreamConfig{
		Subjects: []string{b.env.SubjectPrefix + ".>"}, Storage: jetstream.MemoryStorage,
		MaxAge: time.Minute, Duplicates: 30 * time.Second,
	}, 2*time.Minute)
	s, err := b.js.Stream(ctx, b.env.Stream)
	require.NoError(t, err)
	require.Equal(t, 30*time.Second, s.CachedInfo().Config.Duplicates)

	b.writes(t, 6, makeKeys(3))
	eventually(t, 10*time.Second, func() bool { return pendingPublish(t, b.env) == 0 }, "all events published")
	checkEvents(t, b.env, readStream(t, b.js, b.env.Stream))
}

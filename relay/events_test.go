package relay

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	cejs "github.com/cloudevents/sdk-go/protocol/nats_jetstream/v2"
	"github.com/cloudevents/sdk-go/v2/client"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace"

	"github.com/writethrough/writethrough/internal/testenv"
	"github.com/writethrough/writethrough/outbox"
	"github.com/writethrough/writethrough/writer"
)

// A crash between publish and mark leaves acknowledged events pending; the
// next relay publishes them again and JetStream drops the repeats.
func TestRepublishAfterCrashIsDeduplicated(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.writes(t, 100, makeKeys(10))
	r := b.start(t, b.config(nil))
	eventually(t, 10*time.Second, func() bool { return pendingPublish(t, b.env) == 0 }, "published")
	before := len(readStream(t, b.js, b.env.Stream))
	require.Equal(t, 100, before)

	// The marks are lost, as if the relay died right after the acks.
	r.kill()
	_, err := b.env.Pool.Exec(context.Background(), `UPDATE outbox SET publish_state = 'pending', published_at = NULL`)
	require.NoError(t, err)
	b.start(t, b.config(nil))
	eventually(t, 15*time.Second, func() bool { return pendingPublish(t, b.env) == 0 }, "published again")
	msgs := readStream(t, b.js, b.env.Stream)
	require.Len(t, msgs, before, "JetStream dropped every repeat")
	checkEvents(t, b.env, msgs)
}

// A consumer built with the CloudEvents SDK decodes every event with all
// its attributes.
func TestCloudEventsSDKDecodesEvents(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.start(t, b.config(nil))

	tid, _ := trace.TraceIDFromHex("0af7651916cd43dd8448eb211c80319c")
	sid, _ := trace.SpanIDFromHex("b7ad6b7169203331")
	tctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled}))
	_, err := b.w.Do(tctx, func(tx writer.Tx) error {
		if _, err := tx.Put(tctx, "users", "a/b", []byte(`{"name": "Ada"}`)); err != nil {
			return err
		}
		if _, err := tx.Patch(tctx, "users", "a/b", []byte(`{"age": 36}`)); err != nil {
			return err
		}
		_, err := tx.Delete(tctx, "users", "a/b")
		return err
	})
	require.NoError(t, err)
	b.writes(t, 20, makeKeys(5))
	entries := outboxEntries(t, b.env)

	consumer, err := cejs.NewConsumerFromConn(b.nc, b.env.Stream, b.env.SubjectPrefix+".>", nil, nil)
	require.NoError(t, err)
	c, err := client.New(consumer)
	require.NoError(t, err)
	var mu sync.Mutex
	got := map[string]event.Event{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.StartReceiver(ctx, func(e event.Event) {
			mu.Lock()
			got[e.ID()] = e
			mu.Unlock()
		})
	}()
	eventually(t, 15*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == len(entries) }, "every event received")
	cancel()
	require.NoError(t, <-done)
	require.NoError(t, consumer.Close(context.Background()))

	for _, e := range entries {
		ev, ok := got[e.EventID.String()]
		require.True(t, ok, "event %s", e.EventID)
		require.NoError(t, ev.Validate())
		require.Equal(t, "1.0", ev.SpecVersion())
		require.Equal(t, "/test", ev.Source())
		require.Equal(t, "writethrough.entity."+string(e.Op), ev.Type())
		require.Equal(t, e.Collection+"/"+e.EntityID, ev.Subject())
		require.Equal(t, outbox.FormatTime(e.CommittedAt), ev.Time().UTC().Format(outbox.TimeFormat))
		require.Equal(t, "application/json", ev.DataContentType())
		require.Equal(t, strconv.FormatInt(e.Version, 10), ev.Extensions()["entityversion"])
		require.Equal(t, string(e.Representation()), string(ev.Data()))
		if e.EntityID == "a/b" {
			require.Equal(t, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", ev.Extensions()["traceparent"])
		} else {
			require.NotContains(t, ev.Extensions(), "traceparent")
		}
	}
	require.Contains(t, string(got[entries[2].EventID.String()].Data()), `"data":null,"deleted":true`)
}

func outboxEntries(t testing.TB, env *testenv.Env) []*outbox.Entry {
	rows, err := env.Pool.Query(context.Background(), `SELECT event_id, collection, entity_id, version, op, data::text, committed_at FROM outbox ORDER BY seq`)
	require.NoError(t, err)
	defer rows.Close()
	var out []*outbox.Entry
	for rows.Next() {
		e := &outbox.Entry{}
		var data *string
		require.NoError(t, rows.Scan(&e.EventID, &e.Collection, &e.EntityID, &e.Version, &e.Op, &data, &e.CommittedAt))
		if data != nil {
			e.Data = []byte(*data)
		}
		out = append(out, e)
	}
	require.NoError(t, rows.Err())
	return out
}

// A change too large for the server's max payload becomes a dead letter at
// once; its key moves on and the other keys flow.
func TestPoisonEventIsDeadLettered(t *testing.T) {
	t.Parallel()
	env := testenv.New(t)
	srv := startNATS(t, "max_payload: 4096")
	b := setupWith(t, env, srv.url("nats"), env.Fence)
	b.start(t, b.config(nil))
	ctx := context.Background()
	put := func(id, data string) {
		_, err := b.w.Do(ctx, func(tx writer.Tx) error {
			_, err := tx.Put(ctx, "docs", id, []byte(data))
			return err
		})
		require.NoError(t, err)
	}
	put("big", `{"a": 1}`)
	put("big", `"`+strings.Repeat("x", 8000)+`"`)
	put("big", `{"a": 3}`)
	b.writes(t, 50, makeKeys(5))

	eventually(t, 10*time.Second, func() bool { return pendingPublish(t, env) == 0 }, "everything else published")
	var version, attempts int64
	var lastErr string
	require.NoError(t, env.Pool.QueryRow(ctx, `SELECT version, attempts, last_error FROM outbox WHERE publish_state = 'dead'`).Scan(&version, &attempts, &lastErr))
	require.EqualValues(t, 2, version)
	require.EqualValues(t, 1, attempts)
	require.Contains(t, lastErr, "max payload")

	msgs := readStream(t, b.js, env.Stream)
	require.Len(t, msgs, countState(t, env, `true`)-1)
	var bigVersions []string
	for _, m := range msgs {
		if m.Header.Get("ce-subject") == "docs/big" {
			bigVersions = append(bigVersions, m.Header.Get("ce-entityversion"))
		}
	}
	require.Equal(t, []string{"1", "3"}, bigVersions, "the key moved on past its dead letter")
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/outbox"
)

// TestOutboxReplaySkipsDeadLetters: an event that can never be published on
// its own (over the server's max payload, or over the stream's maximum
// message size) is skipped and reported; the others still go out, and the
// command exits 1 at the end.
func TestOutboxReplaySkipsDeadLetters(t *testing.T) {
	t.Parallel()
	b := setupAdmin(t)
	ctx := context.Background()
	nc, err := nats.Connect(b.env.NATSURL)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	_, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: b.env.Stream, Subjects: []string{b.env.SubjectPrefix + ".>"}, Duplicates: 2 * time.Minute,
		Storage: jetstream.MemoryStorage, MaxMsgSize: 4096,
	})
	require.NoError(t, err)

	b.put(t, "users", "0", `{}`)
	b.put(t, "users", "huge", fmt.Sprintf(`{"s": %q}`, strings.Repeat("x", int(nc.MaxPayload()))))
	b.put(t, "users", "1", `{}`)
	b.put(t, "users", "big", fmt.Sprintf(`{"s": %q}`, strings.Repeat("y", 8192)))
	b.put(t, "users", "2", `{}`)
	entries, err := outbox.ReplayBatch(ctx, b.env.Pool, outbox.Filter{}, 0, 100)
	require.NoError(t, err)
	eventID := map[string]string{}
	for _, e := range entries {
		eventID[e.EntityID] = e.EventID.String()
	}
	require.Len(t, eventID, 5)

	code, out, errOut := b.cmd(t, "outbox", "replay", "--events", "--collection", "users", "--replay-id", "r1", "--json")
	require.Equal(t, exitFail, code, "stdout: %s\nstderr: %s", out, errOut)
	var rep replayReport
	require.NoError(t, json.Unmarshal([]byte(out), &rep), out)
	require.EqualValues(t, 5, rep.Events.Selected)
	require.EqualValues(t, 3, rep.Events.Published)
	require.EqualValues(t, 2, rep.Events.Skipped)
	require.Len(t, rep.Events.SkippedEvents, 2)
	require.Equal(t, eventID["huge"], rep.Events.SkippedEvents[0].ID)
	require.Equal(t, "huge", rep.Events.SkippedEvents[0].EntityID)
	require.Contains(t, rep.Events.SkippedEvents[0].Error, "maximum payload")
	require.Equal(t, eventID["big"], rep.Events.SkippedEvents[1].ID)
	require.Equal(t, "big", rep.Events.SkippedEvents[1].EntityID)
	require.Contains(t, errOut, eventID["huge"])
	require.Contains(t, errOut, eventID["big"])
	require.Contains(t, errOut, "skipped 2 ")

	var keys []string
	for _, m := range consume(t, js, b.env.Stream, 1, 3) {
		keys = append(keys, m.Headers().Get("ce-subject"))
	}
	require.Equal(t, []string{"users/0", "users/1", "users/2"}, keys)

	// The table says the same, and the ids go to stderr.
	code, out, errOut = b.cmd(t, "outbox", "replay", "--events", "--collection", "users", "--replay-id", "r2")
	require.Equal(t, exitFail, code, "stdout: %s\nstderr: %s", out, errOut)
	require.Contains(t, out, "re-published 3 of 5 selected events")
	require.Contains(t, out, "2 skipped")
	require.Contains(t, errOut, eventID["huge"])
	require.Contains(t, errOut, eventID["big"])
}

// TestOutboxReplayStopsOnOutage: losing the connection to NATS is not a
// problem of one event; the run stops with exit 1 and skips nothing.
func TestOutboxReplayStopsOnOutage(t *testing.T) {
	t.Parallel()
	b := setupAdmin(t)
	createStream(t, b.env)
	for i := range 200 {
		b.put(t, "users", fmt.Sprint(i), `{"n": 1}`)
	}
	// The connection through the proxy is closed after about 20 events'
	// worth of bytes.
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	px := toxiproxy.NewProxy(srv, "nats", "127.0.0.1:0", strings.TrimPrefix(b.env.NATSURL, "nats://"))
	require.NoError(t, px.Start())
	t.Cleanup(px.Stop)
	_, err := px.Toxics.AddToxicJson(strings.NewReader(`{"name":"cut","type":"limit_data","stream":"upstream","toxicity":1,"attributes":{"bytes":12000}}`))
	require.NoError(t, err)
	b.vars["NATS_URL"] = "nats://" + px.Listen

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code, out, errOut := b.cmdCtx(t, ctx, "outbox", "replay", "--events", "--collection", "users", "--window", "1", "--json")
	require.NoError(t, ctx.Err(), "the replay hung")
	require.Equal(t, exitFail, code, "stdout: %s\nstderr: %s", out, errOut)
	require.Empty(t, out, "an outage stops the run before any report")
	require.NotContains(t, errOut, "skipped")
	require.Contains(t, errOut, "outbox replay: publish ")
}

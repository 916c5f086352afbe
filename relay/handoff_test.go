package relay

import (
	"bufio"
	"context"
	"encoding/json"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/internal/cloudevent"
	"github.com/writethrough/writethrough/internal/testenv"
	"github.com/writethrough/writethrough/outbox"
	"github.com/writethrough/writethrough/writer"
)

// startIdle starts a relay that claims only when woken (no poll, long
// leases), logging at debug level into logs. It returns once the relay
// holds every partition and its first claim is over. Count claims in logs
// from the offset it returns.
func startIdle(t *testing.T, b *bundle, logs *testenv.SyncBuffer) (*Relay, int) {
	t.Helper()
	// A change committed before the start: the relay's first claim (it
	// listens, and holds every partition, before it) brings it. Once that
	// claim is logged and the change marked, no claim runs or is due: the
	// poll interval is an hour.
	_, err := b.w.Put(context.Background(), "warm", "up", []byte(`{}`))
	require.NoError(t, err)
	cfg := b.config(nil)
	cfg.PollInterval = time.Hour
	// Leases far from their margin: a renewal late on a busy machine would
	// leave a partition unworkable for a moment, and its entries claimed.
	cfg.LeaseTTL = time.Minute
	cfg.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r := b.start(t, cfg)
	require.Equal(t, outbox.AllParts, r.leases.workableSet(), "the relay holds every partition from its start")
	eventually(t, 5*time.Second, func() bool {
		_, claimed := logCount(t, logs.String(), "claimed")
		return claimed >= 1 && countState(t, b.env, `publish_state = 'pending' OR cache_state = 'pending'`) == 0
	}, "the first claim brought the change, and it is published and marked")
	return r, len(logs.String())
}

// localWriter returns a writer that hands its entries to r. Its cache
// writes may take long (on a busy machine one past the usual deadline would
// send its entry to a claim instead).
func localWriter(t *testing.T, b *bundle, r *Relay) *writer.Writer {
	t.Helper()
	w, err := writer.New(writer.Config{Pool: b.env.Pool, Fence: b.env.Fence, LocalRelay: r, CacheTimeout: 10 * time.Second})
	require.NoError(t, err)
	t.Cleanup(w.Close)
	return w
}

// logCount reads the relay's JSON debug log: how many lines say msg
// ("claimed", "marked"), and the sum of their entries.
func logCount(t *testing.T, logs, msg string) (lines, entries int) {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(logs))
	for sc.Scan() {
		var line struct {
			Msg     string `json:"msg"`
			Entries int    `json:"entries"`
		}
		require.NoError(t, json.Unmarshal(sc.Bytes(), &line))
		if line.Msg == msg {
			lines++
			entries += line.Entries
		}
	}
	return lines, entries
}

// TestHandoffPublishesWithoutClaim: the changes a writer commits with the
// relay of its process go out without a claim, each key's versions in
// order, and each event is the one a claim of its outbox entry would have
// made.
func TestHandoffPublishesWithoutClaim(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var logs testenv.SyncBuffer
	r, from := startIdle(t, b, &logs)
	w := localWriter(t, b, r)

	ctx := context.Background()
	for i := range 20 {
		_, err := w.Put(ctx, "users", "h"+strconv.Itoa(i%5), []byte(`{"i": `+strconv.Itoa(i)+`}`))
		require.NoError(t, err)
	}
	_, err := w.Delete(ctx, "users", "h0")
	require.NoError(t, err)
	eventually(t, 5*time.Second, func() bool {
		return countState(t, b.env, `publish_state = 'pending' OR cache_state = 'pending'`) == 0
	}, "every event published and marked")
	_, claimed := logCount(t, logs.String()[from:], "claimed")
	require.Zero(t, claimed, "no entry was claimed: %s", logs.String())

	msgs := readStream(t, b.js, b.env.Stream)
	checkEvents(t, b.env, msgs)
	want := map[string]*outbox.Entry{}
	for _, e := range outboxEntries(t, b.env) {
		want[e.EventID.String()] = e
	}
	for _, m := range msgs {
		id := m.Header.Get(cloudevent.HeaderID)
		claimed := cloudevent.Encode(want[id], "/test", b.env.SubjectPrefix)
		require.Equal(t, claimed.Subject, m.Subject, "event %s", id)
		require.Equal(t, string(claimed.Data), string(m.Data), "event %s", id)
		for k, v := range claimed.Header {
			require.Equal(t, v, m.Header.Values(k), "event %s: header %s", id, k)
		}
	}
}

// swallow is a local relay that hears nothing: its writer's commits wake
// no relay and send no NOTIFY.
type swallow struct{}

func (swallow) WakeHeld([]*outbox.Entry, bool) outbox.PartSet { return 0 }

// TestHandoffWaitsForUnknownPredecessor: a handed entry whose previous
// version the relay has not published (here committed unannounced) is not
// published before it: it is claimed with it, in order.
func TestHandoffWaitsForUnknownPredecessor(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var logs testenv.SyncBuffer
	r, from := startIdle(t, b, &logs)
	ctx := context.Background()

	quiet, err := writer.New(writer.Config{Pool: b.env.Pool, Fence: b.env.Fence, LocalRelay: swallow{}})
	require.NoError(t, err)
	defer quiet.Close()
	_, err = quiet.Put(ctx, "users", "late", []byte(`{"v": 1}`))
	require.NoError(t, err)
	require.Equal(t, 1, pendingPublish(t, b.env), "version 1 waits unannounced")

	w := localWriter(t, b, r)
	_, err = w.Put(ctx, "users", "late", []byte(`{"v": 2}`))
	require.NoError(t, err)
	eventually(t, 5*time.Second, func() bool { return pendingPublish(t, b.env) == 0 }, "both versions published")
	_, claimed := logCount(t, logs.String()[from:], "claimed")
	require.Equal(t, 2, claimed, "both versions were claimed")
	checkEvents(t, b.env, readStream(t, b.js, b.env.Stream))
}

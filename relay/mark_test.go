package relay

import (
	"context"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/internal/testenv"
)

func TestMarkWait(t *testing.T) {
	now := time.Now()
	require.Equal(t, markLinger, markWait(now, now, 1, false, false), "a small batch right after a mark waits")
	require.Equal(t, 2*time.Millisecond, markWait(now, now.Add(2*time.Millisecond-markLinger), 3, false, false))
	require.Zero(t, markWait(now, now.Add(-markLinger), 1, false, false), "after markLinger it goes")
	require.Zero(t, markWait(now, time.Time{}, 1, false, false), "the first mark after a quiet moment goes at once")
	require.Zero(t, markWait(now, now, markEager, false, false), "a large batch goes at once")
	require.Zero(t, markWait(now, now, 1, true, false), "a failed attempt goes at once: its key waits for the record")
	require.Zero(t, markWait(now, now, 1, false, true), "a stopping relay marks at once")
}

// TestSmallMarksWaitForCompany writes one change after another through a
// writer with its relay in process, as serve runs them, and counts the
// marking statements the relay's debug log reports: finished events are
// marked a few at a time, not each on its own.
func TestSmallMarksWaitForCompany(t *testing.T) {
	b := setup(t)
	var logs testenv.SyncBuffer
	cfg := b.config(nil)
	cfg.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r := b.start(t, cfg)
	w := localWriter(t, b, r)

	ctx := context.Background()
	const n = 100
	start := time.Now()
	for i := range n {
		_, err := w.Put(ctx, "marks", strconv.Itoa(i), []byte(`{}`))
		require.NoError(t, err)
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		var done int
		require.NoError(t, b.env.Pool.QueryRow(ctx,
			`SELECT count(*) FROM outbox WHERE publish_state = 'done' AND cache_state = 'done'`).Scan(&done))
		return done == n
	}, "every event published and marked")
	took := time.Since(start)

	statements, entries := logCount(t, logs.String(), "marked")
	require.GreaterOrEqual(t, entries, n, "every event is marked")
	// One statement per markLinger at most, and a few more for the batches
	// that go at once after a quiet moment.
	require.Equal(t, 5*time.Millisecond, markLinger)
	limit := int(took/(5*time.Millisecond)) + 5
	require.LessOrEqual(t, statements, limit, "%d events over %s were marked in %d statements", n, took.Round(time.Millisecond), statements)
	t.Logf("%d events over %s marked in %d statements", n, took.Round(time.Millisecond), statements)
}

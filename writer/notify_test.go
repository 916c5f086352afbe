package writer

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/internal/testenv"
	"github.com/writethrough/writethrough/outbox"
)

func TestNextGap(t *testing.T) {
	gap := notifyGap
	var seen []time.Duration
	for range 5 {
		gap = nextGap(gap, true)
		seen = append(seen, gap)
	}
	require.Equal(t, []time.Duration{2 * notifyGap, 4 * notifyGap, maxNotifyGap, maxNotifyGap, maxNotifyGap}, seen,
		"sustained commits space the NOTIFYs out, up to maxNotifyGap")
	require.Equal(t, notifyGap, nextGap(maxNotifyGap, false), "a quiet gap brings the next NOTIFY back to notifyGap")
}

// TestWakerSpacesNotifiesUnderLoad pokes the waker without pause and reads
// what a relay LISTENing would hear: every poked partition, in far fewer
// NOTIFYs than one per notifyGap.
func TestWakerSpacesNotifiesUnderLoad(t *testing.T) {
	env := testenv.New(t)
	listener := env.Listen(t)
	k := newWaker(env.Pool, slog.New(slog.DiscardHandler), nil)
	defer k.stop()

	const burst = 400 * time.Millisecond
	var poked outbox.PartSet
	end := time.Now().Add(burst)
	pace := time.NewTicker(100 * time.Microsecond)
	defer pace.Stop()
	for i := 0; time.Now().Before(end); i++ {
		e := &outbox.Entry{Partition: i % outbox.Partitions}
		poked = poked.With(e.Partition)
		k.poke([]*outbox.Entry{e}, false)
		<-pace.C
	}

	var heard outbox.PartSet
	notifies := 0
	for {
		// The waker has sent all once a relay hears nothing for a while.
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		n, err := listener.WaitForNotification(ctx)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			break
		}
		require.NoError(t, err)
		notifies++
		v, err := strconv.ParseUint(n.Payload, 16, 64)
		require.NoError(t, err, "payload %q", n.Payload)
		heard |= outbox.PartSet(v)
	}
	require.Equal(t, poked, heard, "every poked partition is notified")
	// One NOTIFY per millisecond would be up to 400 over the burst; spaced
	// out to 4 ms it is at most 100, plus the first few gaps growing.
	require.Equal(t, 4*time.Millisecond, maxNotifyGap)
	limit := int(burst/(4*time.Millisecond)) + 10
	require.LessOrEqual(t, notifies, limit, "NOTIFYs over %s of back-to-back commits", burst)
	t.Logf("%d NOTIFYs over %s of back-to-back commits", notifies, burst)
}

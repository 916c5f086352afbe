package relay

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/outbox"
)

// Three relays share one database under continuous writes; one is killed
// mid-batch. Nothing is lost, nothing is out of order, and the lease log
// shows no two relays ever owned a partition at once.
func TestThreeRelaysOneKilled(t *testing.T) {
	t.Parallel()
	b := setup(t)
	relays := make([]*Relay, 3)
	for i := range relays {
		cfg := b.config(nil)
		cfg.ID = fmt.Sprintf("r%d", i)
		cfg.BatchPerPartition = 4 // small batches: the kill lands mid-work
		relays[i] = b.start(t, cfg)
	}
	keys := makeKeys(200)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var written atomic.Int64
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				b.writes(t, 5, keys)
				written.Add(5)
			}
		}()
	}
	// Fair share: every relay works some partitions.
	eventually(t, 10*time.Second, func() bool {
		for _, r := range relays {
			if n := r.leases.count(); n < 15 || n > 32 {
				return false
			}
		}
		return true
	}, "leases spread over the relays")
	eventually(t, 10*time.Second, func() bool { return written.Load() > 200 }, "writes flow")

	victim := relays[1]
	victimParts := victim.leases.count()
	require.Positive(t, victimParts)
	victim.kill()
	killedAt := time.Now()
	eventually(t, 10*time.Second, func() bool {
		return relays[0].leases.count()+relays[2].leases.count() == outbox.Partitions
	}, "the killed relay's partitions are taken over")
	t.Logf("takeover of %d partitions after %s", victimParts, time.Since(killedAt).Round(time.Millisecond))
	require.Less(t, time.Since(killedAt), 10*time.Second)

	eventually(t, 10*time.Second, func() bool { return written.Load() > 600 }, "writes flow after the kill")
	cancel()
	wg.Wait()
	eventually(t, 20*time.Second, func() bool { return pendingPublish(t, b.env) == 0 }, "everything published")
	checkEvents(t, b.env, readStream(t, b.js, b.env.Stream))
	checkLeaseLog(t, b)
}

// checkLeaseLog asserts that per partition, each lease began after the
// previous one ended.
func checkLeaseLog(t *testing.T, b *bundle) {
	t.Helper()
	log, err := outbox.LeaseLog(context.Background(), b.env.Pool)
	require.NoError(t, err)
	require.NotEmpty(t, log)
	require.Empty(t, leaseOverlaps(log))
	owners := map[string]bool{}
	for _, r := range log {
		owners[r.Owner] = true
	}
	require.GreaterOrEqual(t, len(owners), 2, "several relays owned partitions")
}

// leaseOverlaps lists leases that began before the previous lease of their
// partition ended. log is ordered by partition and epoch.
func leaseOverlaps(log []outbox.LeaseRecord) []string {
	var out []string
	for i := 1; i < len(log); i++ {
		prev, cur := log[i-1], log[i]
		if prev.Part != cur.Part {
			continue
		}
		if prev.ReleasedAt == nil || cur.AcquiredAt.Before(*prev.ReleasedAt) {
			out = append(out, fmt.Sprintf("part %d: epoch %d (%s) acquired %s while epoch %d (%s) held it (released %v)",
				cur.Part, cur.Epoch, cur.Owner, cur.AcquiredAt, prev.Epoch, prev.Owner, prev.ReleasedAt))
		}
	}
	return out
}

// The checker itself catches an overlap and an unclosed lease.
func TestLeaseOverlapsCatchesOverlap(t *testing.T) {
	t.Parallel()
	now := time.Now()
	at := func(d time.Duration) *time.Time { x := now.Add(d); return &x }
	ok := []outbox.LeaseRecord{
		{Part: 1, Epoch: 1, Owner: "a", AcquiredAt: now, ReleasedAt: at(time.Second)},
		{Part: 1, Epoch: 2, Owner: "b", AcquiredAt: *at(time.Second)},
		{Part: 2, Epoch: 1, Owner: "a", AcquiredAt: now},
	}
	require.Empty(t, leaseOverlaps(ok))
	overlap := []outbox.LeaseRecord{
		{Part: 1, Epoch: 1, Owner: "a", AcquiredAt: now, ReleasedAt: at(2 * time.Second)},
		{Part: 1, Epoch: 2, Owner: "b", AcquiredAt: *at(time.Second)},
	}
	require.Len(t, leaseOverlaps(overlap), 1)
	open := []outbox.LeaseRecord{
		{Part: 1, Epoch: 1, Owner: "a", AcquiredAt: now},
		{Part: 1, Epoch: 2, Owner: "b", AcquiredAt: *at(time.Second)},
	}
	require.Len(t, leaseOverlaps(open), 1)
}

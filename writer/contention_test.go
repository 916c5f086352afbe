package writer_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/writer"
)

// 32 writers on 8 hot keys while readers run: every key ends with cache = DB,
// no reader sees a version go backwards, and the final version equals the
// number of acknowledged writes.
func TestContentionHotKeys(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	const (
		writers        = 32
		keys           = 8
		writesPerPeer  = 25
		readersPerKind = 4
	)
	var acked [keys]atomic.Int64
	var wg sync.WaitGroup
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range writesPerPeer {
				k := (i + n) % keys
				id := strconv.Itoa(k)
				var err error
				if n%3 == 2 {
					_, err = b.w.Do(ctx, func(tx writer.Tx) error {
						_, err := tx.Patch(ctx, "hot", id, fmt.Appendf(nil, `{"w%d": %d}`, i, n))
						return err
					})
					if errors.Is(err, writer.ErrNotFound) {
						continue
					}
				} else {
					_, err = b.w.Do(ctx, func(tx writer.Tx) error {
						_, err := tx.Put(ctx, "hot", id, fmt.Appendf(nil, `{"by": %d, "n": %d}`, i, n))
						return err
					})
				}
				if err != nil {
					t.Errorf("write: %v", err)
					return
				}
				acked[k].Add(1)
			}
		}()
	}

	// Readers: half through the writer (cache then Postgres), half straight
	// from Redis as a downstream service would. Each checks its own view of
	// every key never goes backwards.
	stop := make(chan struct{})
	var rg sync.WaitGroup
	var reads atomic.Int64
	for r := range 2 * readersPerKind {
		rg.Add(1)
		go func() {
			defer rg.Done()
			var last [keys]int64
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				k := (r + n) % keys
				id := strconv.Itoa(k)
				var v int64
				if r%2 == 0 {
					e, _, err := b.w.Get(ctx, "hot", id)
					if errors.Is(err, writer.ErrNotFound) {
						continue
					}
					if err != nil {
						t.Errorf("get: %v", err)
						return
					}
					v = e.Version
				} else {
					s, err := b.env.Redis.HGet(ctx, b.env.Prefix+"hot:"+id, "v").Result()
					if err != nil {
						continue // miss
					}
					v, _ = strconv.ParseInt(s, 10, 64)
				}
				reads.Add(1)
				if v < last[k] {
					t.Errorf("reader %d saw key %d go back from v%d to v%d", r, k, last[k], v)
					return
				}
				last[k] = v
			}
		}()
	}
	wg.Wait()
	close(stop)
	rg.Wait()
	require.Positive(t, reads.Load())

	for k := range keys {
		id := strconv.Itoa(k)
		var v int64
		var d string
		require.NoError(t, b.env.Pool.QueryRow(ctx, `SELECT version, data::text FROM entities WHERE collection='hot' AND id=$1`, id).Scan(&v, &d))
		require.Equal(t, acked[k].Load(), v, "key %d: version = acknowledged writes", k)
		h, err := b.env.Redis.HGetAll(ctx, b.env.Prefix+"hot:"+id).Result()
		require.NoError(t, err)
		require.Equal(t, strconv.FormatInt(v, 10), h["v"], "key %d cache version", k)
		require.Equal(t, d, h["d"], "key %d cache data", k)
		var n int64
		require.NoError(t, b.env.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE collection='hot' AND entity_id=$1`, id).Scan(&n))
		require.Equal(t, v, n, "key %d: one outbox entry per change", k)
	}
}

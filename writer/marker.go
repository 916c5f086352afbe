package writer

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/writethrough/writethrough/outbox"
)

func newEventID() uuid.UUID {
	id, err := uuid.NewV7()
	if err != nil {
		return uuid.New()
	}
	return id
}

// marker records, off the request path, which outbox entries the synchronous
// cache write already served, so the relay skips their repair. It batches the
// sequence numbers and flushes them in one statement. Losing a batch (a crash)
// only costs the relay a redundant, harmless repair from the current row.
type marker struct {
	pool *pgxpool.Pool
	log  *slog.Logger

	mu      sync.Mutex
	pending []int64
	wake    chan struct{}
	done    chan struct{}
	stopped chan struct{}
}

const markerMaxBatch = 5000

func newMarker(pool *pgxpool.Pool, log *slog.Logger) *marker {
	m := &marker{pool: pool, log: log, wake: make(chan struct{}, 1), done: make(chan struct{}), stopped: make(chan struct{})}
	go m.loop()
	return m
}

func (m *marker) add(seqs []int64) {
	m.mu.Lock()
	m.pending = append(m.pending, seqs...)
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

func (m *marker) loop() {
	defer close(m.stopped)
	for {
		select {
		case <-m.wake:
		case <-m.done:
			m.flush()
			return
		}
		// Let a few more commits join the batch.
		t := time.NewTimer(2 * time.Millisecond)
		select {
		case <-t.C:
		case <-m.done:
			t.Stop()
		}
		m.flush()
	}
}

func (m *marker) flush() {
	for {
		m.mu.Lock()
		batch := m.pending
		if len(batch) > markerMaxBatch {
			batch = batch[:markerMaxBatch]
			m.pending = append([]int64(nil), m.pending[markerMaxBatch:]...)
		} else {
			m.pending = nil
		}
		m.mu.Unlock()
		if len(batch) == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := outbox.MarkCacheDone(ctx, m.pool, batch)
		cancel()
		if err != nil {
			// The relay repairs these from the current rows; nothing is lost.
			m.log.Warn("record cache writes", slog.Int("entries", len(batch)), slog.String("error", err.Error()))
		}
	}
}

func (m *marker) stop() {
	close(m.done)
	<-m.stopped
}

package writer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/writethrough/writethrough/internal/fence"
	"github.com/writethrough/writethrough/outbox"
)

// Entity is a live entity as read.
type Entity struct {
	Collection string
	ID         string
	Version    int64
	Data       []byte // JSON text exactly as Postgres prints it
	// UpdatedAt in outbox.TimeFormat.
	UpdatedAt string
}

// Representation is the entity representation (CONTRACT §3).
func (e *Entity) Representation() []byte {
	return e.AppendRepresentation(nil)
}

// AppendRepresentation appends the entity representation to b.
func (e *Entity) AppendRepresentation(b []byte) []byte {
	return outbox.AppendEntity(b, e.Collection, e.ID, e.Version, e.Data, e.UpdatedAt)
}

// Source says where a read was served from.
type Source int

const (
	FromCache Source = iota + 1
	FromPostgres
)

// Get reads an entity: the cache first; on a miss, or with Redis unreachable,
// Postgres, followed by a fenced fill of the cache so a newer concurrent write
// wins by its version. A deleted or absent entity is ErrNotFound.
func (w *Writer) Get(ctx context.Context, collection, id string) (Entity, Source, error) {
	if err := validateKey(collection, id); err != nil {
		return Entity{}, 0, err
	}
	c, hit, err := w.fence.Get(withDeadline(ctx, time.Now().Add(w.readTimeout)), collection, id)
	switch {
	case err != nil:
		w.metrics.cacheReads.Add(ctx, 1, readError)
	case hit:
		w.metrics.cacheReads.Add(ctx, 1, readHit)
		if c.Tombstone() {
			return Entity{}, FromCache, ErrNotFound
		}
		return Entity{Collection: collection, ID: id, Version: c.Version, Data: c.Data, UpdatedAt: c.UpdatedAt}, FromCache, nil
	default:
		w.metrics.cacheReads.Add(ctx, 1, readMiss)
	}
	redisUp := err == nil

	var (
		version int64
		data    *string
		updated time.Time
	)
	err = w.pool.QueryRow(ctx, getSQL, collection, id).Scan(&version, &data, &updated)
	if errors.Is(err, pgx.ErrNoRows) {
		return Entity{}, FromPostgres, ErrNotFound
	}
	if err != nil {
		return Entity{}, FromPostgres, fmt.Errorf("%w: read entity: %w", ErrUnavailable, err)
	}
	e := Entity{Collection: collection, ID: id, Version: version, UpdatedAt: outbox.FormatTime(updated)}
	if data != nil {
		e.Data = []byte(*data)
	}
	if redisUp {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.cacheTimeout)
		_, _ = w.fence.Apply(fctx, fence.Entry{Collection: collection, ID: id, Version: version, Data: e.Data, UpdatedAt: e.UpdatedAt})
		cancel()
	}
	if data == nil {
		return Entity{}, FromPostgres, ErrNotFound
	}
	return e, FromPostgres, nil
}

// deadlineCtx is ctx with an earlier deadline and no timer of its own. The
// Redis client (ContextTimeoutEnabled) turns the deadline into the
// connection's I/O deadline, which is all a read needs: unlike
// context.WithTimeout it neither starts a timer nor registers with ctx on
// every cache read. Done and Err stay ctx's.
type deadlineCtx struct {
	context.Context
	deadline time.Time
}

func withDeadline(ctx context.Context, d time.Time) context.Context {
	if cur, ok := ctx.Deadline(); ok && cur.Before(d) {
		return ctx
	}
	return deadlineCtx{Context: ctx, deadline: d}
}

func (c deadlineCtx) Deadline() (time.Time, bool) { return c.deadline, true }

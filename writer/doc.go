// Package writer is the library core of writethrough: it commits entity
// changes and their outbox entries in one Postgres transaction, then writes
// the touched keys to Redis through the version fence before it returns.
//
// An application can commit its own SQL in the same transaction:
//
//	res, err := w.Do(ctx, func(tx writer.Tx) error {
//		if _, err := tx.Exec(ctx, `insert into orders ...`); err != nil {
//			return err
//		}
//		_, err := tx.Put(ctx, "orders", id, orderJSON)
//		return err
//	})
//
// A change to one entity alone is cheaper through Writer.Put and
// Writer.Delete, which send BEGIN, the change, its outbox entry and COMMIT
// in one round trip.
//
// Versions are bumped under the entity's row lock, never taken from clocks or
// transaction ids. A Redis error or timeout after the commit never fails the
// call: the result reports CachePending and the relay repairs the key from the
// current row. A Postgres error fails the call and nothing reaches Redis.
//
// The package also serves the HTTP API of CONTRACT §3 over a Writer
// (Handler). It does not publish events; that is the relay's job.
package writer

// Package verify compares the Redis cache with Postgres and repairs it: the
// scanning behind `cache verify`, `cache repair` and the cache half of
// `outbox replay`. It reads entities in keyset-paginated batches and the
// cache through pipelined HMGETs, and writes only through the fence
// (conditioned repairs, fenced refreshes, conditioned orphan deletes). It
// does not touch the outbox.
package verify

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/writethrough/writethrough/internal/fence"
	"github.com/writethrough/writethrough/outbox"
)

// Kind is a way a cache key can diverge from Postgres.
type Kind string

const (
	// Missing: a live entity has no cache key.
	Missing Kind = "missing"
	// Stale: the key holds a lower version than Postgres.
	Stale Kind = "stale"
	// Ahead: the key holds a higher version than Postgres (a restored
	// database, or a bug).
	Ahead Kind = "ahead"
	// DataMismatch: same version, different data or updated_at.
	DataMismatch Kind = "data_mismatch"
	// TombstoneMismatch: same version, but one side is deleted and the other
	// is not.
	TombstoneMismatch Kind = "tombstone_mismatch"
	// Orphan: a cache key with no entity row.
	Orphan Kind = "orphan"
)

// Config of a scan. The zero value of each optional field means its default.
type Config struct {
	// Pool reads entities. Required.
	Pool *pgxpool.Pool
	// Fence reads and writes the cache. Required.
	Fence *fence.Fence
	// Collection limits the scan to one collection; "" means all.
	Collection string
	// Batch is the number of keys read per round trip; default 1000.
	Batch int
	// Repair rewrites each divergent key to Postgres's current row through
	// fence.Repair, conditioned on what the scan saw.
	Repair bool
	// DeleteOrphans removes orphan keys (conditioned on what the scan saw);
	// only with Repair.
	DeleteOrphans bool
	// SkipOrphans skips the Redis SCAN for orphans.
	SkipOrphans bool
	// MaxSamples is the number of divergent keys kept in the report;
	// default 20.
	MaxSamples int
	// Progress, when set, is called after every batch with the number of
	// entities checked so far.
	Progress func(checked int64)
}

// Sample is one divergent key.
type Sample struct {
	Kind       Kind   `json:"kind"`
	Collection string `json:"collection"`
	ID         string `json:"id"`
	// PostgresVersion is 0 for an orphan; RedisVersion 0 for a missing key.
	PostgresVersion int64 `json:"postgres_version"`
	RedisVersion    int64 `json:"redis_version"`
}

// Report of a scan.
type Report struct {
	// Checked is the number of entity rows compared.
	Checked int64 `json:"checked"`
	// KeysScanned is the number of cache keys the orphan scan looked at.
	KeysScanned       int64 `json:"keys_scanned"`
	Missing           int64 `json:"missing"`
	Stale             int64 `json:"stale"`
	Ahead             int64 `json:"ahead"`
	DataMismatch      int64 `json:"data_mismatch"`
	TombstoneMismatch int64 `json:"tombstone_mismatch"`
	Orphans           int64 `json:"orphans"`
	// Repaired keys now hold Postgres's row; Skipped keys changed while the
	// repair ran (a concurrent write won, which is what the fence is for).
	Repaired       int64    `json:"repaired"`
	Skipped        int64    `json:"skipped"`
	OrphansDeleted int64    `json:"orphans_deleted"`
	Samples        []Sample `json:"samples"`
	Elapsed        float64  `json:"elapsed_seconds"`
}

// Divergent is the number of divergent keys found.
func (r *Report) Divergent() int64 {
	return r.Missing + r.Stale + r.Ahead + r.DataMismatch + r.TombstoneMismatch + r.Orphans
}

func (r *Report) count(k Kind) {
	switch k {
	case Missing:
		r.Missing++
	case Stale:
		r.Stale++
	case Ahead:
		r.Ahead++
	case DataMismatch:
		r.DataMismatch++
	case TombstoneMismatch:
		r.TombstoneMismatch++
	case Orphan:
		r.Orphans++
	}
}

func (c *Config) check() error {
	if c.Pool == nil {
		return errors.New("verify: Config.Pool is required")
	}
	if c.Fence == nil {
		return errors.New("verify: Config.Fence is required")
	}
	if c.Batch < 0 {
		return errors.New("verify: Config.Batch must not be negative")
	}
	if c.DeleteOrphans && !c.Repair {
		return errors.New("verify: Config.DeleteOrphans needs Repair")
	}
	if strings.Contains(c.Collection, ":") {
		return errors.New("verify: Config.Collection must not contain ':'")
	}
	c.Batch = cmp.Or(c.Batch, 1000)
	c.MaxSamples = cmp.Or(c.MaxSamples, 20)
	return nil
}

// row is an entity row as the cache should hold it.
type row struct {
	collection, id string
	version        int64
	data           []byte // nil when deleted
	updatedAt      string
}

func (r *row) entry() fence.Entry {
	return fence.Entry{Collection: r.collection, ID: r.id, Version: r.version, Data: r.data, UpdatedAt: r.updatedAt}
}

const (
	scanAllSQL = `
SELECT collection, id, version, data::text, updated_at FROM entities
WHERE (collection, id) > ($1, $2)
ORDER BY collection, id LIMIT $3`
	scanCollectionSQL = `
SELECT collection, id, version, data::text, updated_at FROM entities
WHERE collection = $1 AND id > $2
ORDER BY collection, id LIMIT $3`
	readRowsSQL = `
SELECT e.collection, e.id, e.version, e.data::text, e.updated_at
FROM unnest($1::text[], $2::text[]) AS k(collection, id)
JOIN entities e ON e.collection = k.collection AND e.id = k.id`
)

func scanRows(rows pgx.Rows) ([]row, error) {
	var out []row
	var r row
	var data *string
	var at time.Time
	_, err := pgx.ForEachRow(rows, []any{&r.collection, &r.id, &r.version, &data, &at}, func() error {
		q := r
		if data != nil {
			q.data = []byte(*data)
		}
		q.updatedAt = outbox.FormatTime(at)
		out = append(out, q)
		return nil
	})
	return out, err
}

// nextBatch reads the batch of entities after (collection, id).
func (c *Config) nextBatch(ctx context.Context, afterC, afterID string) ([]row, error) {
	var rows pgx.Rows
	var err error
	if c.Collection != "" {
		rows, err = c.Pool.Query(ctx, scanCollectionSQL, c.Collection, afterID, c.Batch)
	} else {
		rows, err = c.Pool.Query(ctx, scanAllSQL, afterC, afterID, c.Batch)
	}
	if err != nil {
		return nil, fmt.Errorf("read entities: %w", err)
	}
	out, err := scanRows(rows)
	if err != nil {
		return nil, fmt.Errorf("read entities: %w", err)
	}
	return out, nil
}

// readRows reads the current rows of keys; the map is keyed by cache key.
func (c *Config) readRows(ctx context.Context, keys [][2]string) (map[[2]string]row, error) {
	cols := make([]string, len(keys))
	ids := make([]string, len(keys))
	for i, k := range keys {
		cols[i], ids[i] = k[0], k[1]
	}
	rows, err := c.Pool.Query(ctx, readRowsSQL, cols, ids)
	if err != nil {
		return nil, fmt.Errorf("re-read entities: %w", err)
	}
	list, err := scanRows(rows)
	if err != nil {
		return nil, fmt.Errorf("re-read entities: %w", err)
	}
	out := make(map[[2]string]row, len(list))
	for _, r := range list {
		out[[2]string{r.collection, r.id}] = r
	}
	return out, nil
}

// classify compares a row with what its key holds; "" means they agree. A
// deleted entity whose tombstone expired (no key) agrees.
func classify(r *row, c fence.Cached, hit bool) Kind {
	switch {
	case !hit && r.data == nil:
		return ""
	case !hit:
		return Missing
	case c.Version < r.version:
		return Stale
	case c.Version > r.version:
		return Ahead
	case c.Tombstone() != (r.data == nil):
		return TombstoneMismatch
	case string(c.Data) != string(r.data) || c.UpdatedAt != r.updatedAt:
		return DataMismatch
	}
	return ""
}

// Run scans every entity (of Config.Collection), compares it with the cache,
// then scans the cache for orphans, repairing what it finds when asked.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	start := time.Now()
	rep := &Report{Samples: []Sample{}}
	var afterC, afterID string
	keys := make([]string, 0, cfg.Batch)
	for {
		batch, err := cfg.nextBatch(ctx, afterC, afterID)
		if err != nil {
			return rep, err
		}
		if len(batch) == 0 {
			break
		}
		last := batch[len(batch)-1]
		afterC, afterID = last.collection, last.id
		keys = keys[:0]
		for i := range batch {
			keys = append(keys, cfg.Fence.Key(batch[i].collection, batch[i].id))
		}
		cached, hit, err := cfg.Fence.GetMany(ctx, keys)
		if err != nil {
			return rep, err
		}
		var suspects [][2]string
		for i := range batch {
			if classify(&batch[i], cached[i], hit[i]) != "" {
				suspects = append(suspects, [2]string{batch[i].collection, batch[i].id})
			}
		}
		if len(suspects) > 0 {
			if err := cfg.settle(ctx, rep, suspects); err != nil {
				return rep, err
			}
		}
		rep.Checked += int64(len(batch))
		if cfg.Progress != nil {
			cfg.Progress(rep.Checked)
		}
		if len(batch) < cfg.Batch {
			break
		}
	}
	if !cfg.SkipOrphans {
		if err := cfg.orphans(ctx, rep); err != nil {
			return rep, err
		}
	}
	rep.Elapsed = time.Since(start).Seconds()
	return rep, nil
}

// settle looks again at keys that looked divergent: the cache first, then
// Postgres. A write commits before it reaches the cache, so the row read
// second is at least as new as anything the cache showed; a key that was
// merely caught between commit and cache write usually agrees now, and a
// repair never writes a row older than what the cache held.
func (c *Config) settle(ctx context.Context, rep *Report, suspects [][2]string) error {
	keys := make([]string, len(suspects))
	for i, k := range suspects {
		keys[i] = c.Fence.Key(k[0], k[1])
	}
	cached, hit, err := c.Fence.GetMany(ctx, keys)
	if err != nil {
		return err
	}
	rows, err := c.readRows(ctx, suspects)
	if err != nil {
		return err
	}
	for i, k := range suspects {
		r, ok := rows[k]
		if !ok {
			continue // deleted rows stay as tombstones, so this cannot happen; the orphan scan would see it
		}
		kind := classify(&r, cached[i], hit[i])
		if kind == "" {
			continue
		}
		rep.count(kind)
		if len(rep.Samples) < c.MaxSamples {
			rep.Samples = append(rep.Samples, Sample{Kind: kind, Collection: k[0], ID: k[1], PostgresVersion: r.version, RedisVersion: cached[i].Version})
		}
		if !c.Repair {
			continue
		}
		var seen *fence.Cached
		if hit[i] {
			seen = &cached[i]
		}
		out, err := c.Fence.Repair(ctx, r.entry(), seen)
		if err != nil {
			return err
		}
		if out == fence.Applied {
			rep.Repaired++
		} else {
			rep.Skipped++
		}
	}
	return nil
}

// orphans scans the cache keys of the prefix (and collection) and looks
// each batch up in Postgres. The cache is read before Postgres: a key whose
// entity is created meanwhile had its row committed before the key was
// written, so it is never taken for an orphan, and a delete is conditioned
// on the content read.
func (c *Config) orphans(ctx context.Context, rep *Report) error {
	match := globEscape(c.Fence.Prefix())
	if c.Collection != "" {
		match += globEscape(c.Collection) + ":"
	}
	match += "*"
	rdb := c.Fence.Client()
	var cursor uint64
	pending := make([]string, 0, c.Batch)
	flush := func() error {
		err := c.checkOrphans(ctx, rep, pending)
		pending = pending[:0]
		return err
	}
	for {
		keys, next, err := rdb.ScanType(ctx, cursor, match, int64(c.Batch), "hash").Result()
		if err != nil {
			return fmt.Errorf("scan cache keys: %w", err)
		}
		for _, k := range keys {
			if _, _, ok := c.Fence.SplitKey(k); !ok {
				continue
			}
			pending = append(pending, k)
			if len(pending) >= c.Batch {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		cursor = next
		if cursor == 0 {
			break
		}
	}
	if len(pending) > 0 {
		return flush()
	}
	return nil
}

func (c *Config) checkOrphans(ctx context.Context, rep *Report, keys []string) error {
	rep.KeysScanned += int64(len(keys))
	cached, hit, err := c.Fence.GetMany(ctx, keys)
	if err != nil {
		return err
	}
	pairs := make([][2]string, 0, len(keys))
	for _, k := range keys {
		col, id, _ := c.Fence.SplitKey(k)
		pairs = append(pairs, [2]string{col, id})
	}
	exists, err := c.exists(ctx, pairs)
	if err != nil {
		return err
	}
	for i, p := range pairs {
		if exists[p] || !hit[i] {
			continue // an entity key, or one that vanished since the scan
		}
		rep.Orphans++
		if len(rep.Samples) < c.MaxSamples {
			rep.Samples = append(rep.Samples, Sample{Kind: Orphan, Collection: p[0], ID: p[1], RedisVersion: cached[i].Version})
		}
		if !c.DeleteOrphans {
			continue
		}
		out, err := c.Fence.DeleteIfUnchanged(ctx, p[0], p[1], &cached[i])
		if err != nil {
			return err
		}
		if out == fence.Applied {
			rep.OrphansDeleted++
		} else {
			rep.Skipped++
		}
	}
	return nil
}

const existsSQL = `
SELECT e.collection, e.id
FROM unnest($1::text[], $2::text[]) AS k(collection, id)
JOIN entities e ON e.collection = k.collection AND e.id = k.id`

func (c *Config) exists(ctx context.Context, pairs [][2]string) (map[[2]string]bool, error) {
	cols := make([]string, len(pairs))
	ids := make([]string, len(pairs))
	for i, p := range pairs {
		cols[i], ids[i] = p[0], p[1]
	}
	rows, err := c.Pool.Query(ctx, existsSQL, cols, ids)
	if err != nil {
		return nil, fmt.Errorf("look up cache keys: %w", err)
	}
	out := make(map[[2]string]bool, len(pairs))
	var p [2]string
	_, err = pgx.ForEachRow(rows, []any{&p[0], &p[1]}, func() error {
		out[p] = true
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("look up cache keys: %w", err)
	}
	return out, nil
}

// globEscape escapes the glob characters of a SCAN MATCH pattern.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Package pg opens the Postgres pool writethrough uses: a pgx/v5 pool whose
// connections have search_path set to the writethrough schema, so every
// statement of ours names its tables without a schema.
package pg

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Config of a pool.
type Config struct {
	// URL is the Postgres connection string. Required.
	URL string
	// Schema holds writethrough's tables. Required.
	Schema string
	// MaxConns overrides the pool size when positive; else the URL's
	// pool_max_conns, else defaultMaxConns.
	MaxConns int32
	// Tweak, when set, may change the parsed pool configuration (for example
	// to add a tracer) before the pool is created.
	Tweak func(*pgxpool.Config)
}

const defaultMaxConns = 32

// Open creates the pool. It does not wait for the server to answer.
func Open(ctx context.Context, cfg Config) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(cfg.URL)
	if err != nil {
		// The parse error can echo the URL, password included; keep it out.
		return nil, fmt.Errorf("DATABASE_URL is not a valid Postgres URL")
	}
	pc.ConnConfig.RuntimeParams["search_path"] = cfg.Schema
	// Every statement of ours is short and indexed, but a relay's claim
	// over many partitions has an estimated cost above jit_above_cost, and
	// compiling it took longer than running it. The URL may still turn JIT
	// on (options=-c jit=on).
	if _, set := pc.ConnConfig.RuntimeParams["jit"]; !set {
		pc.ConnConfig.RuntimeParams["jit"] = "off"
	}
	switch {
	case cfg.MaxConns > 0:
		pc.MaxConns = cfg.MaxConns
	case !strings.Contains(cfg.URL, "pool_max_conns"):
		// pgxpool's default (max(4, cores)) queues writers behind each other
		// on small machines: a write holds its connection for two round
		// trips and the fsync of its commit, so allow many more.
		pc.MaxConns = defaultMaxConns
	}
	if cfg.Tweak != nil {
		cfg.Tweak(pc)
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("open postgres pool: %w", err)
	}
	return pool, nil
}

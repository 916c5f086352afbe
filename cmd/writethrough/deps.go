package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

	"github.com/writethrough/writethrough/internal/config"
	"github.com/writethrough/writethrough/internal/fence"
	"github.com/writethrough/writethrough/internal/pg"
	"github.com/writethrough/writethrough/internal/telemetry"
	"github.com/writethrough/writethrough/migrations"
)

// deps are the connections a command works with.
type deps struct {
	cfg   *config.Config
	tel   *telemetry.Telemetry
	pool  *pgxpool.Pool
	rdb   *redis.Client
	fence *fence.Fence
	nc    *nats.Conn // set by connectNATS
}

// connect opens Postgres (checking that it answers and is migrated) and the
// Redis client. It does not require Redis to answer: the service runs
// degraded without it.
func (c *cli) connect(ctx context.Context, cfg *config.Config) (*deps, error) {
	tel, err := telemetry.Setup(ctx, telemetry.Config{LogLevel: cfg.LogLevel, LogOutput: c.stderr, Getenv: c.getenv})
	if err != nil {
		return nil, fmt.Errorf("telemetry: %w", err)
	}
	d := &deps{cfg: cfg, tel: tel}
	redisLogOnce.Do(func() { redis.SetLogger(redisLogger{}) })
	d.pool, err = pg.Open(ctx, pg.Config{URL: cfg.DatabaseURL, Schema: cfg.Schema, Tweak: tel.InstrumentPool})
	if err != nil {
		d.close()
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := d.pool.Ping(pctx); err != nil {
		d.close()
		return nil, fmt.Errorf("postgres does not answer at DATABASE_URL: %v", redact(err))
	}
	if err := migrations.Check(pctx, d.pool, cfg.Schema); err != nil {
		d.close()
		return nil, err
	}
	opt, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		d.close()
		return nil, fmt.Errorf("REDIS_URL: %v", redact(err))
	}
	// The writer bounds each cache call by its own deadline (fence.New).
	opt.ContextTimeoutEnabled = true
	d.rdb = redis.NewClient(opt)
	if err := tel.InstrumentRedis(d.rdb); err != nil {
		d.close()
		return nil, err
	}
	d.fence, err = fence.New(d.rdb, fence.Config{Prefix: cfg.RedisPrefix})
	if err != nil {
		d.close()
		return nil, err
	}
	return d, nil
}

// redisLogger sends the Redis client's own log lines (dial failures, pool
// trouble) to the process log as warnings, in its format, instead of raw
// text on stderr.
type redisLogger struct{}

var redisLogOnce sync.Once

func (redisLogger) Printf(ctx context.Context, format string, v ...any) {
	slog.Default().LogAttrs(ctx, slog.LevelWarn, "redis client", slog.String("detail", redact(fmt.Errorf(format, v...)).Error()))
}

// connectNATS connects to NATS. The connection keeps retrying in the
// background when the server is down at start, so the service starts degraded
// instead of failing.
func (d *deps) connectNATS() error {
	nc, err := nats.Connect(d.cfg.NATSURL,
		nats.Name("writethrough"),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
	)
	if err != nil {
		return fmt.Errorf("NATS_URL: %v", redact(err))
	}
	d.nc = nc
	return nil
}

func (d *deps) close() {
	if d.nc != nil {
		d.nc.Close()
	}
	if d.rdb != nil {
		d.rdb.Close()
	}
	if d.pool != nil {
		d.pool.Close()
	}
	if d.tel != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = d.tel.Shutdown(ctx)
	}
}

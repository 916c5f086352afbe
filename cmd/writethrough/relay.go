package main

import (
	"context"
	"fmt"
	"time"

	"github.com/writethrough/writethrough/relay"
)

func init() {
	register("relay", "run the outbox relay only: repair the cache and publish events", relayCmd)
}

// relayCmd runs a relay until SIGINT/SIGTERM, then stops it gracefully: the
// round in progress finishes and the leases are released for the others.
func relayCmd(ctx context.Context, c *cli, args []string) int {
	fs := c.flags("relay")
	cfg, code := c.parse(fs, args)
	if cfg == nil {
		return code
	}
	d, err := c.connect(ctx, cfg)
	if err != nil {
		return c.fail("relay: %v", err)
	}
	defer d.close()
	if err := d.connectNATS(); err != nil {
		return c.fail("relay: %v", err)
	}
	stop, err := startRelay(ctx, d)
	if err != nil {
		return c.fail("relay: %v", redact(err))
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := stop(sctx); err != nil {
		return c.fail("relay: stop: %v", redact(err))
	}
	return exitOK
}

// startRelay starts the relay over d (d.nc is connected) and returns a
// function that stops it gracefully. serve calls it unless --relay=false.
func startRelay(ctx context.Context, d *deps) (stop func(context.Context) error, err error) {
	r, err := relay.New(relay.Config{
		Pool:           d.pool,
		Fence:          d.fence,
		NATS:           d.nc,
		Stream:         d.cfg.Stream,
		SubjectPrefix:  d.cfg.SubjectPrefix,
		Source:         d.cfg.EventSource,
		Logger:         d.tel.Logger,
		MeterProvider:  d.tel.MeterProvider,
		TracerProvider: d.tel.TracerProvider,
	})
	if err != nil {
		return nil, err
	}
	if err := r.Start(ctx); err != nil {
		return nil, fmt.Errorf("start relay: %w", err)
	}
	return r.Stop, nil
}

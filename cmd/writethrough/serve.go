package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/writethrough/writethrough/internal/fence"
	"github.com/writethrough/writethrough/writer"
)

func init() {
	register("serve", "serve the HTTP API, and run the relay in the same process unless --relay=false", serveCmd)
}

// serveCmd serves the API until SIGINT/SIGTERM, then shuts down in order:
// the HTTP server stops accepting and finishes the requests in flight, then
// the relay stops, then the connections close.
func serveCmd(ctx context.Context, c *cli, args []string) int {
	fs := c.flags("serve")
	withRelay := fs.Bool("relay", true, "run the outbox relay in this process")
	cacheTimeout := fs.Duration("cache-timeout", 200*time.Millisecond, "bound on the synchronous cache write after a commit; past it the write answers X-Cache-Write: pending")
	tombstoneTTL := fs.Duration("tombstone-ttl", 24*time.Hour, "expiry of cached tombstones; must outlast the relay's longest retry horizon")
	valueTTL := fs.Duration("value-ttl", 0, "expiry of cached values (0: none)")
	shutdownTimeout := fs.Duration("shutdown-timeout", 25*time.Second, "how long shutdown waits for requests in flight")
	groupSize := fs.Int("group-size", 32, "most PUTs and DELETEs arriving together that may share one transaction (group commit); 1 commits each on its own")
	rf := bindRelayFlags(fs, c.getenv)
	cfg, code := c.parse(fs, args)
	if cfg == nil {
		return code
	}
	if !rf.valid(c) {
		return exitUsage
	}
	for _, d := range []struct {
		name     string
		v        time.Duration
		positive bool
	}{
		{"--cache-timeout", *cacheTimeout, true},
		{"--tombstone-ttl", *tombstoneTTL, true},
		{"--value-ttl", *valueTTL, false},
		{"--shutdown-timeout", *shutdownTimeout, true},
	} {
		if d.v < 0 || (d.positive && d.v == 0) {
			fmt.Fprintf(c.stderr, "writethrough: bad configuration: %s: must be a positive duration, got %s\n", d.name, d.v)
			return exitUsage
		}
	}

	if *groupSize < 1 {
		fmt.Fprintf(c.stderr, "writethrough: bad configuration: --group-size: must be at least 1, got %d\n", *groupSize)
		return exitUsage
	}

	d, err := c.connect(ctx, cfg)
	if err != nil {
		return c.fail("%v", err)
	}
	defer d.close()
	log := d.tel.Logger
	d.fence, err = fence.New(d.rdb, fence.Config{Prefix: cfg.RedisPrefix, ValueTTL: *valueTTL, TombstoneTTL: *tombstoneTTL})
	if err != nil {
		return c.fail("serve: %v", err)
	}
	if err := d.connectNATS(); err != nil {
		return c.fail("serve: %v", err)
	}
	if mp := d.nc.MaxPayload(); mp > 0 && cfg.MaxBodyBytes > mp-eventEnvelope {
		log.Warn("WT_MAX_BODY_BYTES is above what one event can carry: a change this large commits but its event becomes a dead letter",
			slog.Int64("max_body_bytes", cfg.MaxBodyBytes), slog.Int64("nats_max_payload", mp), slog.Int64("suggested_max", mp-eventEnvelope))
	}
	// The relay in this process is woken directly for the partitions it
	// holds; relays elsewhere by NOTIFY.
	stopRelay := func(context.Context) error { return nil }
	streamErr := func() error { return nil }
	var local writer.LocalRelay
	if *withRelay {
		r, err := startRelay(ctx, d, rf)
		if err != nil {
			return c.fail("serve: %v", redact(err))
		}
		stopRelay, local, streamErr = r.Stop, r, r.StreamError
	}
	w, err := writer.New(writer.Config{
		Pool: d.pool, Fence: d.fence, CacheTimeout: *cacheTimeout, GroupSize: *groupSize,
		Logger: log, MeterProvider: d.tel.MeterProvider, LocalRelay: local,
	})
	if err != nil {
		stopAll(log, stopRelay, *shutdownTimeout)
		return c.fail("serve: %v", err)
	}
	defer w.Close()

	api := writer.NewHandler(w, writer.HandlerConfig{
		MaxBodyBytes:  cfg.MaxBodyBytes,
		Logger:        log,
		MeterProvider: d.tel.MeterProvider,
		ReadyChecks: map[string]func(context.Context) error{
			"nats": func(ctx context.Context) error {
				if !d.nc.IsConnected() {
					return errors.New("not connected")
				}
				if err := streamErr(); err != nil {
					return err // events cannot be published
				}
				return d.nc.FlushWithContext(ctx)
			},
		},
	})
	srv := &http.Server{
		Handler:           d.tel.WrapHandler(withMetrics(api, d.tel.MetricsHandler)),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}

	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		stopAll(log, stopRelay, *shutdownTimeout)
		return c.fail("serve: listen on %s: %v", cfg.HTTPAddr, err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("listening", slog.String("addr", ln.Addr().String()), slog.Bool("relay", *withRelay))

	select {
	case <-ctx.Done():
	case err := <-served:
		stopAll(log, stopRelay, *shutdownTimeout)
		return c.fail("serve: %v", err)
	}
	log.Info("shutting down", slog.Duration("timeout", *shutdownTimeout))
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), *shutdownTimeout)
	defer cancel()
	code = exitOK
	if err := srv.Shutdown(sctx); err != nil {
		log.Error("requests still in flight at the shutdown timeout", slog.String("error", err.Error()))
		_ = srv.Close()
		code = exitFail
	}
	<-served
	if err := stopRelay(sctx); err != nil {
		log.Error("stop relay", slog.String("error", redact(err).Error()))
		code = exitFail
	}
	log.Info("stopped")
	return code
}

func stopAll(log *slog.Logger, stopRelay func(context.Context) error, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := stopRelay(ctx); err != nil {
		log.Error("stop relay", slog.String("error", redact(err).Error()))
	}
}

// withMetrics serves GET and HEAD /metrics from metrics and everything else
// from api, without a second mux on the path of every API request.
// eventEnvelope bounds what an event adds to its entity's data: the
// representation's other fields (an id of up to 512 bytes) and the headers.
const eventEnvelope = 2048

func withMetrics(api, metrics http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			metrics.ServeHTTP(rw, r)
			return
		}
		api.ServeHTTP(rw, r)
	})
}

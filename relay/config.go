package relay

import (
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/writethrough/writethrough/internal/fence"
)

// Config of a Relay. The zero value of each optional field means its
// default; New applies the defaults and names the field of any bad value.
type Config struct {
	// Pool is the Postgres pool; its connections' search_path must name the
	// writethrough schema. Required. The relay also opens one dedicated
	// connection with the pool's settings for LISTEN.
	Pool *pgxpool.Pool
	// Fence writes the cache. Required.
	Fence *fence.Fence
	// NATS is the connection events are published on. Required. It should
	// reconnect forever (nats.MaxReconnects(-1)); the relay waits while it
	// is not connected.
	NATS *nats.Conn

	// Stream is the JetStream stream, created or updated at start with the
	// subjects "{SubjectPrefix}.>". Default "WRITETHROUGH".
	Stream string
	// SubjectPrefix is the first token of every event subject. Default "wt".
	SubjectPrefix string
	// Source is the ce-source of every event. Default "/writethrough".
	Source string
	// DuplicateWindow is the stream's deduplication window: a re-publish of
	// an event (same Nats-Msg-Id) within it is dropped by JetStream. A relay
	// that crashes between publish and mark and stays down longer than this
	// re-delivers the event, so consumers dedupe by ce-id. Default 2m.
	DuplicateWindow time.Duration

	// MaxAttempts is how many failed publishes of one event make it a dead
	// letter. Failures during a broker outage do not count. Default 10.
	MaxAttempts int
	// RetryInitial and RetryMax bound the exponential backoff (with jitter)
	// between attempts of one event. Defaults 500ms and 5m.
	RetryInitial time.Duration
	RetryMax     time.Duration
	// PublishTimeout bounds the wait for one JetStream acknowledgement.
	// Default 5s.
	PublishTimeout time.Duration
	// MaxInFlight bounds unacknowledged publishes. Default 4096.
	MaxInFlight int
	// BatchPerPartition is how many entries one claim reads per partition.
	// Default 256.
	BatchPerPartition int

	// PollInterval is the fallback wake-up when no notification arrives.
	// Default 500ms.
	PollInterval time.Duration
	// LeaseTTL is how long a partition lease lasts without renewal; a dead
	// relay's partitions are taken over within about LeaseTTL plus a fifth
	// of it. Renewals run every LeaseTTL/5; a relay stops working a
	// partition when less than 2/5 of LeaseTTL is left by its own clock.
	// Default 3s, so that after a relay dies its keys' cache repairs and
	// events resume within the 5 s convergence bound.
	LeaseTTL time.Duration
	// RepairGrace is how old a change whose synchronous cache write did not
	// succeed must be before the relay repairs it. Keep it above the
	// writer's CacheTimeout. Default 1s.
	RepairGrace time.Duration
	// Retention is how long finished entries stay in the outbox. Default 72h.
	Retention time.Duration
	// HousekeepingInterval is how often the relay prunes and refreshes its
	// gauges. Default 5s (pruning runs at most once a minute).
	HousekeepingInterval time.Duration

	// Logger; default slog.Default().
	Logger *slog.Logger
	// MeterProvider for metrics; default the global one.
	MeterProvider metric.MeterProvider
	// TracerProvider for spans; default the global one.
	TracerProvider trace.TracerProvider
	// ID names this relay in the relays and lease tables; default
	// "{hostname}-{pid}-{random}". Two running relays must not share it.
	ID string
}

func (c Config) withDefaults() (Config, error) {
	switch {
	case c.Pool == nil:
		return c, errors.New("relay: Config.Pool is required")
	case c.Fence == nil:
		return c, errors.New("relay: Config.Fence is required")
	case c.NATS == nil:
		return c, errors.New("relay: Config.NATS is required")
	}
	for name, d := range map[string]time.Duration{
		"DuplicateWindow": c.DuplicateWindow, "RetryInitial": c.RetryInitial, "RetryMax": c.RetryMax,
		"PublishTimeout": c.PublishTimeout, "PollInterval": c.PollInterval, "LeaseTTL": c.LeaseTTL,
		"RepairGrace": c.RepairGrace, "Retention": c.Retention, "HousekeepingInterval": c.HousekeepingInterval,
	} {
		if d < 0 {
			return c, fmt.Errorf("relay: Config.%s must not be negative", name)
		}
	}
	if c.MaxAttempts < 0 || c.MaxInFlight < 0 || c.BatchPerPartition < 0 {
		return c, errors.New("relay: Config.MaxAttempts, MaxInFlight and BatchPerPartition must not be negative")
	}
	c.Stream = cmp.Or(c.Stream, "WRITETHROUGH")
	c.SubjectPrefix = cmp.Or(c.SubjectPrefix, "wt")
	c.Source = cmp.Or(c.Source, "/writethrough")
	c.DuplicateWindow = cmp.Or(c.DuplicateWindow, 2*time.Minute)
	c.MaxAttempts = cmp.Or(c.MaxAttempts, 10)
	c.RetryInitial = cmp.Or(c.RetryInitial, 500*time.Millisecond)
	c.RetryMax = cmp.Or(c.RetryMax, 5*time.Minute)
	c.PublishTimeout = cmp.Or(c.PublishTimeout, 5*time.Second)
	c.MaxInFlight = cmp.Or(c.MaxInFlight, 4096)
	c.BatchPerPartition = cmp.Or(c.BatchPerPartition, 256)
	c.PollInterval = cmp.Or(c.PollInterval, 500*time.Millisecond)
	c.LeaseTTL = cmp.Or(c.LeaseTTL, 3*time.Second)
	c.RepairGrace = cmp.Or(c.RepairGrace, time.Second)
	c.Retention = cmp.Or(c.Retention, 72*time.Hour)
	c.HousekeepingInterval = cmp.Or(c.HousekeepingInterval, 5*time.Second)
	if c.LeaseTTL < 500*time.Millisecond {
		return c, errors.New("relay: Config.LeaseTTL must be at least 500ms")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.MeterProvider == nil {
		c.MeterProvider = otel.GetMeterProvider()
	}
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	if c.ID == "" {
		host, _ := os.Hostname()
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		c.ID = fmt.Sprintf("%s-%d-%s", cmp.Or(host, "relay"), os.Getpid(), hex.EncodeToString(b))
	}
	return c, nil
}

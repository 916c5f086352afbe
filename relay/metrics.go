package relay

import (
	"context"
	"math"
	"sync/atomic"

	"go.opentelemetry.io/otel/metric"
)

type metrics struct {
	published metric.Int64Counter
	dead      metric.Int64Counter
	repairs   metric.Int64Counter
	retries   metric.Int64Counter
	reg       metric.Registration

	lagBits   atomic.Uint64 // float64 seconds
	deadTotal atomic.Int64
}

func newMetrics(mp metric.MeterProvider) (*metrics, error) {
	m := &metrics{}
	meter := mp.Meter("github.com/writethrough/writethrough/relay")
	var err error
	if m.published, err = meter.Int64Counter("writethrough.relay.events.published",
		metric.WithDescription("Events JetStream acknowledged."), metric.WithUnit("{event}")); err != nil {
		return nil, err
	}
	if m.dead, err = meter.Int64Counter("writethrough.relay.dead_letters",
		metric.WithDescription("Events the relay gave up on (dead letters)."), metric.WithUnit("{event}")); err != nil {
		return nil, err
	}
	if m.repairs, err = meter.Int64Counter("writethrough.relay.cache.repairs",
		metric.WithDescription("Keys rewritten in the cache from their current row."), metric.WithUnit("{key}")); err != nil {
		return nil, err
	}
	if m.retries, err = meter.Int64Counter("writethrough.relay.publish.retries",
		metric.WithDescription("Failed publish attempts scheduled for a retry."), metric.WithUnit("{event}")); err != nil {
		return nil, err
	}
	// Export the counters from the start, at zero, so an alert on their rate
	// has a series before the first failure.
	for _, c := range []metric.Int64Counter{m.published, m.dead, m.repairs, m.retries} {
		c.Add(context.Background(), 0)
	}
	lag, err := meter.Float64ObservableGauge("writethrough.outbox.lag",
		metric.WithDescription("Age of the oldest outbox entry whose event waits for publishing."), metric.WithUnit("s"))
	if err != nil {
		return nil, err
	}
	deadG, err := meter.Int64ObservableGauge("writethrough.outbox.dead",
		metric.WithDescription("Dead letters in the outbox."), metric.WithUnit("{event}"))
	if err != nil {
		return nil, err
	}
	m.reg, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveFloat64(lag, math.Float64frombits(m.lagBits.Load()))
		o.ObserveInt64(deadG, m.deadTotal.Load())
		return nil
	}, lag, deadG)
	if err != nil {
		return nil, err
	}
	return m, nil
}

func (m *metrics) setLag(seconds float64) { m.lagBits.Store(math.Float64bits(seconds)) }

func (m *metrics) close() {
	if m.reg != nil {
		_ = m.reg.Unregister()
	}
}

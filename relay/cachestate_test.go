package relay

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// A write whose synchronous cache write succeeded is settled by the same mark
// that records its event as published: no repair, nothing left pending.
func TestSynchronousCacheWriteNeedsNoRepair(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.writes(t, 60, makeKeys(20))

	reader := sdkmetric.NewManualReader()
	cfg := b.config(nil)
	cfg.MeterProvider = sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	cfg.RepairGrace = time.Hour // a repair could only come from a wrong flag
	b.start(t, cfg)

	eventually(t, 10*time.Second, func() bool {
		return countState(t, b.env, `publish_state = 'pending' OR cache_state = 'pending'`) == 0
	}, "every entry published and its cache state settled")

	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(context.Background(), &rm))
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "writethrough.relay.cache.repairs" {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				require.Zero(t, dp.Value, "no key needed a repair")
			}
		}
	}
}

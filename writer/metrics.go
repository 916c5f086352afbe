package writer

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/writethrough/writethrough/internal/fence"
)

type metrics struct {
	writeDuration metric.Float64Histogram
	cacheWrites   metric.Int64Counter
	cacheReads    metric.Int64Counter
}

func newMetrics(mp metric.MeterProvider) (*metrics, error) {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	m := mp.Meter("github.com/writethrough/writethrough/writer")
	var err, e error
	out := &metrics{}
	out.writeDuration, e = m.Float64Histogram("writethrough.write.duration",
		metric.WithUnit("s"), metric.WithDescription("Time to commit a write and write it through to the cache, by outcome."),
		metric.WithExplicitBucketBoundaries(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
	err = errors.Join(err, e)
	out.cacheWrites, e = m.Int64Counter("writethrough.cache.writes",
		metric.WithDescription("Synchronous cache writes per key, by result: ok, pending or fenced_out."))
	err = errors.Join(err, e)
	out.cacheReads, e = m.Int64Counter("writethrough.cache.reads",
		metric.WithDescription("Cache reads by result: hit, miss or error."))
	err = errors.Join(err, e)
	return out, err
}

func (m *metrics) recordWrite(ctx context.Context, start time.Time, res Result, err error) {
	outcome := string(res.CacheWrite)
	switch {
	case err == nil:
	case IsInvalid(err), errors.Is(err, ErrNotFound), errors.Is(err, ErrPrecondition):
		outcome = "rejected"
	case errors.Is(err, ErrConflict):
		outcome = "conflict"
	default:
		outcome = "error"
	}
	opt, ok := outcomeAttrs[outcome]
	if !ok {
		opt = outcomeAttr(outcome)
	}
	m.writeDuration.Record(ctx, time.Since(start).Seconds(), opt)
}

// The attribute sets of the counters, built once rather than on every
// request.
var (
	cacheOK        = resultAttr("ok")
	cachePending   = resultAttr("pending")
	cacheFencedOut = resultAttr("fenced_out")
	readHit        = resultAttr("hit")
	readMiss       = resultAttr("miss")
	readError      = resultAttr("error")
	outcomeAttrs   = map[string]metric.MeasurementOption{
		"ok": outcomeAttr("ok"), "pending": outcomeAttr("pending"), "rejected": outcomeAttr("rejected"),
		"conflict": outcomeAttr("conflict"), "error": outcomeAttr("error"),
	}
)

func resultAttr(v string) metric.MeasurementOption {
	return metric.WithAttributeSet(attribute.NewSet(attribute.String("result", v)))
}

func outcomeAttr(v string) metric.MeasurementOption {
	return metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", v)))
}

func (m *metrics) recordCache(ctx context.Context, outcomes []fence.Outcome) {
	var ok, pending, fenced int64
	for _, o := range outcomes {
		switch o {
		case fence.Applied:
			ok++
		case fence.FencedOut:
			fenced++
		default:
			pending++
		}
	}
	if ok > 0 {
		m.cacheWrites.Add(ctx, ok, cacheOK)
	}
	if pending > 0 {
		m.cacheWrites.Add(ctx, pending, cachePending)
	}
	if fenced > 0 {
		m.cacheWrites.Add(ctx, fenced, cacheFencedOut)
	}
}

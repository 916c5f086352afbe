package writer

import (
	"context"
	"net/http"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// route is an API route, for metrics.
type route int

const (
	routeGet route = iota
	routePut
	routePatch
	routeDelete
	routeBatch
	numRoutes
)

func routeOf(op string) route {
	switch op {
	case opPut:
		return routePut
	case opPatch:
		return routePatch
	case opDelete:
		return routeDelete
	}
	return routeBatch
}

var routeAttrs = [numRoutes][2]string{
	routeGet:    {http.MethodGet, "/v1/{collection}/{id}"},
	routePut:    {http.MethodPut, "/v1/{collection}/{id}"},
	routePatch:  {http.MethodPatch, "/v1/{collection}/{id}"},
	routeDelete: {http.MethodDelete, "/v1/{collection}/{id}"},
	routeBatch:  {http.MethodPost, "/v1/_batch"},
}

// The statuses the API answers; their attribute sets are built once so a
// request records its duration without allocating them.
var knownStatuses = []int{200, 201, 204, 304, 400, 404, 405, 409, 412, 413, 415, 422, 500, 503}

type httpMetrics struct {
	duration metric.Float64Histogram
	opts     [numRoutes]map[int]metric.RecordOption
}

func newHTTPMetrics(mp metric.MeterProvider) (*httpMetrics, error) {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	d, err := mp.Meter("github.com/writethrough/writethrough/writer").Float64Histogram("http.server.request.duration",
		metric.WithUnit("s"), metric.WithDescription("Duration of API requests, by method, route and status."),
		metric.WithExplicitBucketBoundaries(0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
	if err != nil {
		return nil, err
	}
	m := &httpMetrics{duration: d}
	for rt := range numRoutes {
		m.opts[rt] = make(map[int]metric.RecordOption, len(knownStatuses))
		for _, st := range knownStatuses {
			m.opts[rt][st] = statusAttrs(rt, st)
		}
	}
	return m, nil
}

func statusAttrs(rt route, status int) metric.RecordOption {
	return metric.WithAttributeSet(attribute.NewSet(
		attribute.String("http.request.method", routeAttrs[rt][0]),
		attribute.String("http.route", routeAttrs[rt][1]),
		attribute.Int("http.response.status_code", status),
	))
}

func (m *httpMetrics) record(ctx context.Context, rt route, status int, start time.Time) {
	opt, ok := m.opts[rt][status]
	if !ok {
		opt = statusAttrs(rt, status)
	}
	m.duration.Record(ctx, time.Since(start).Seconds(), opt)
}

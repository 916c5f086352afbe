package telemetry

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/exaring/otelpgx"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/extra/redisotel/v9"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
)

// InstrumentPool makes every statement of a pool built from pc a span (and
// records query durations) when tracing is on: pass it as pg.Config.Tweak. Spans carry the SQL
// text, never its arguments.
func (t *Telemetry) InstrumentPool(pc *pgxpool.Config) {
	if !t.Tracing {
		return // no spans wanted: keep the query path bare
	}
	pc.ConnConfig.Tracer = otelpgx.NewTracer(
		otelpgx.WithTracerProvider(t.TracerProvider),
		otelpgx.WithMeterProvider(t.MeterProvider),
		otelpgx.WithTrimSQLInSpanName(),
	)
}

// InstrumentPoolStats exports the pool's connection statistics as metrics.
func (t *Telemetry) InstrumentPoolStats(pool *pgxpool.Pool) error {
	if err := otelpgx.RecordStats(pool, otelpgx.WithStatsMeterProvider(t.MeterProvider)); err != nil {
		return fmt.Errorf("postgres pool metrics: %w", err)
	}
	return nil
}

// InstrumentRedis makes every Redis command and pipeline a span when tracing
// is on. Command
// arguments (cache contents) are left out of the spans.
func (t *Telemetry) InstrumentRedis(rdb redis.UniversalClient) error {
	if !t.Tracing {
		return nil // no spans wanted: keep the cache path bare
	}
	err := redisotel.InstrumentTracing(rdb,
		redisotel.WithTracerProvider(t.TracerProvider),
		redisotel.WithDBStatement(false),
		redisotel.WithCallerEnabled(false),
	)
	if err != nil {
		return fmt.Errorf("redis tracing: %w", err)
	}
	return nil
}

// WrapHandler traces every request through h: it continues an incoming W3C
// traceparent and names the span after the matched route ("PUT
// /v1/{collection}/{id}"), so the writer's spans and the outbox row's
// traceparent belong to the request's trace. Put the ServeMux inside it so
// the route is known. Request duration metrics by route and status come
// from the API handler itself (writethrough's http.server.request.duration),
// so otelhttp records none, to avoid a second series of the same name.
// /metrics and /healthz are not traced. Without tracing, an incoming
// traceparent is only carried on.
func (t *Telemetry) WrapHandler(h http.Handler) http.Handler {
	if !t.Tracing {
		// Spans that go nowhere are not worth their cost on every request;
		// request durations are recorded by the API handler itself. An
		// incoming trace is still carried on, so the outbox entry and the
		// event (ce-traceparent) belong to the caller's trace.
		return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			if _, ok := r.Header["Traceparent"]; ok {
				r = r.WithContext(t.Propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header)))
			}
			h.ServeHTTP(rw, r)
		})
	}
	return otelhttp.NewHandler(h, "http.server",
		otelhttp.WithTracerProvider(t.TracerProvider),
		otelhttp.WithMeterProvider(metricnoop.NewMeterProvider()),
		otelhttp.WithPropagators(t.Propagator),
		otelhttp.WithSpanNameFormatter(spanName),
		otelhttp.WithFilter(func(r *http.Request) bool {
			return r.URL.Path != "/metrics" && r.URL.Path != "/healthz"
		}),
	)
}

func spanName(_ string, r *http.Request) string {
	switch {
	case r.Pattern == "":
		return r.Method
	case strings.HasPrefix(r.Pattern, r.Method+" "):
		return r.Pattern
	}
	return r.Method + " " + r.Pattern
}

// Package telemetry wires OpenTelemetry for the writethrough process: a meter
// provider exported in Prometheus text format on /metrics, a tracer provider
// (OTLP or another exporter when the standard OTEL_* variables ask for one,
// else none), W3C trace-context propagation, and the slog JSON logger that
// stamps trace_id and span_id on records written inside a span.
//
// It also owns the instrumentation of the clients and the API: otelpgx for
// Postgres, redisotel for Redis and otelhttp for the handler. Library
// packages take providers through their Config; only cmd/ calls Setup.
package telemetry

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Config of Setup. The zero value of each field means its default.
type Config struct {
	// LogLevel: debug, info (default), warn or error.
	LogLevel string
	// LogOutput receives JSON log lines; default os.Stderr.
	LogOutput io.Writer
	// ServiceName is the service.name resource attribute unless
	// OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES set one; default
	// "writethrough".
	ServiceName string
	// SpanExporter, when set, receives every span synchronously instead of
	// the exporter the environment names (tests use an in-memory one).
	SpanExporter sdktrace.SpanExporter
	// Getenv reads the OTEL_* variables that decide whether tracing is on;
	// default os.Getenv. The exporter itself reads the process environment.
	Getenv func(string) string
}

// Telemetry holds the process's providers.
type Telemetry struct {
	MeterProvider metric.MeterProvider
	// TracerProvider is the SDK provider when tracing is on, else a no-op
	// one (which still carries an incoming trace context through).
	TracerProvider trace.TracerProvider
	Propagator     propagation.TextMapPropagator
	// MetricsHandler serves /metrics.
	MetricsHandler http.Handler
	Logger         *slog.Logger
	// Tracing reports whether spans are recorded and exported.
	Tracing bool

	shutdown []func(context.Context) error
}

// Setup creates the providers and sets them (and the logger) as the global
// ones.
func Setup(ctx context.Context, cfg Config) (*Telemetry, error) {
	getenv := cfg.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(cmp.Or(cfg.LogLevel, "info"))); err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}
	var out io.Writer = os.Stderr
	if cfg.LogOutput != nil {
		out = cfg.LogOutput
	}
	t := &Telemetry{
		Logger:     slog.New(NewLogHandler(slog.NewJSONHandler(out, &slog.HandlerOptions{Level: lvl}))),
		Propagator: propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
	}

	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", cmp.Or(cfg.ServiceName, "writethrough"))),
		resource.WithFromEnv(), resource.WithTelemetrySDK(), resource.WithHost(), resource.WithProcessPID())
	if err != nil && res == nil {
		return nil, fmt.Errorf("telemetry resource: %w", err)
	}

	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp), sdkmetric.WithResource(res))
	t.MeterProvider = mp
	t.MetricsHandler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	t.shutdown = append(t.shutdown, mp.Shutdown)

	t.TracerProvider = noop.NewTracerProvider()
	switch {
	case cfg.SpanExporter != nil:
		tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(cfg.SpanExporter), sdktrace.WithResource(res))
		t.TracerProvider, t.Tracing = tp, true
		t.shutdown = append(t.shutdown, tp.Shutdown)
	case tracingWanted(getenv):
		se, err := autoexport.NewSpanExporter(ctx)
		if err != nil {
			_ = mp.Shutdown(ctx)
			return nil, fmt.Errorf("OTEL_TRACES_EXPORTER: %w", err)
		}
		if !autoexport.IsNoneSpanExporter(se) {
			tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(se), sdktrace.WithResource(res))
			t.TracerProvider, t.Tracing = tp, true
			t.shutdown = append(t.shutdown, tp.Shutdown)
		}
	}

	otel.SetMeterProvider(mp)
	otel.SetTracerProvider(t.TracerProvider)
	otel.SetTextMapPropagator(t.Propagator)
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		t.Logger.Warn("opentelemetry", slog.String("error", err.Error()))
	}))
	slog.SetDefault(t.Logger)
	return t, nil
}

// tracingWanted reports whether the standard variables ask for spans: an
// exporter named in OTEL_TRACES_EXPORTER (other than "none") or an OTLP
// endpoint. With neither, nothing is exported and no SDK runs.
func tracingWanted(getenv func(string) string) bool {
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return false
	}
	if e := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")); e != "" {
		return e != "none"
	}
	return getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// Tracer returns a tracer of the process's provider.
func (t *Telemetry) Tracer(name string) trace.Tracer { return t.TracerProvider.Tracer(name) }

// Shutdown flushes and stops the providers.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var err error
	for _, f := range t.shutdown {
		err = errors.Join(err, f(ctx))
	}
	return err
}

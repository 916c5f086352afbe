// Package telemetry wires OpenTelemetry for the writethrough process: a meter
// provider exported in Prometheus text format on /metrics, a tracer provider
// (OTLP when the standard OTEL_* variables ask for it, else none), and the
// slog JSON logger. Library packages take providers through their Config;
// only cmd/ calls Setup.
package telemetry

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Config of Setup.
type Config struct {
	// LogLevel: debug, info, warn or error.
	LogLevel string
	// LogOutput receives JSON log lines.
	LogOutput io.Writer
}

// Telemetry holds the process's providers.
type Telemetry struct {
	MeterProvider  metric.MeterProvider
	TracerProvider trace.TracerProvider
	// MetricsHandler serves /metrics.
	MetricsHandler http.Handler
	Logger         *slog.Logger

	shutdown []func(context.Context) error
}

// Setup creates the providers and sets them as the global ones.
func Setup(ctx context.Context, cfg Config) (*Telemetry, error) {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.LogLevel))
	t := &Telemetry{Logger: slog.New(slog.NewJSONHandler(cfg.LogOutput, &slog.HandlerOptions{Level: lvl}))}

	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, err
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp))
	t.MeterProvider = mp
	t.MetricsHandler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	t.shutdown = append(t.shutdown, mp.Shutdown)
	t.TracerProvider = noop.NewTracerProvider()
	otel.SetMeterProvider(mp)
	return t, nil
}

// Shutdown flushes and stops the providers.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var err error
	for _, f := range t.shutdown {
		err = errors.Join(err, f(ctx))
	}
	return err
}

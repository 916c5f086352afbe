package telemetry_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/writethrough/writethrough/internal/fence"
	"github.com/writethrough/writethrough/internal/pg"
	"github.com/writethrough/writethrough/internal/telemetry"
	"github.com/writethrough/writethrough/internal/testenv"
	"github.com/writethrough/writethrough/relay"
	"github.com/writethrough/writethrough/writer"
)

func TestTelemetryLogsCarryTraceIDs(t *testing.T) {
	var logs testenv.SyncBuffer
	exp := tracetest.NewInMemoryExporter()
	tel, err := telemetry.Setup(context.Background(), telemetry.Config{LogLevel: "info", LogOutput: &logs, SpanExporter: exp})
	require.NoError(t, err)
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	require.True(t, tel.Tracing)

	ctx, span := tel.Tracer("test").Start(context.Background(), "op")
	tel.Logger.InfoContext(ctx, "inside", "k", "v")
	span.End()
	tel.Logger.InfoContext(context.Background(), "outside")
	tel.Logger.DebugContext(ctx, "below the level")

	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	require.Len(t, lines, 2)
	var in, out map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &in))
	require.NoError(t, json.Unmarshal([]byte(lines[1]), &out))
	require.Equal(t, span.SpanContext().TraceID().String(), in["trace_id"])
	require.Equal(t, span.SpanContext().SpanID().String(), in["span_id"])
	require.Equal(t, "v", in["k"])
	require.NotContains(t, out, "trace_id")
	require.Len(t, exp.GetSpans(), 1)
}

func TestTelemetryTracingOffWithoutOTELVariables(t *testing.T) {
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }
	for _, tc := range []struct {
		vars map[string]string
		on   bool
	}{
		{map[string]string{}, false},
		{map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, false},
		{map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, false},
		{map[string]string{"OTEL_SERVICE_NAME": "x"}, false},
	} {
		env = tc.vars
		tel, err := telemetry.Setup(context.Background(), telemetry.Config{LogOutput: io.Discard, Getenv: getenv})
		require.NoError(t, err)
		require.Equal(t, tc.on, tel.Tracing, "%v", tc.vars)
		_, span := tel.Tracer("t").Start(context.Background(), "x")
		require.False(t, span.IsRecording())
		require.NoError(t, tel.Shutdown(context.Background()))
	}
	_, err := telemetry.Setup(context.Background(), telemetry.Config{LogLevel: "loud"})
	require.Error(t, err)
}

// stack is the service assembled the way serve does it, instrumented.
type stack struct {
	env   *testenv.Env
	tel   *telemetry.Telemetry
	w     *writer.Writer
	srv   *httptest.Server
	relay *relay.Relay
	js    jetstream.JetStream
}

func newStack(t *testing.T, exp *tracetest.InMemoryExporter, logs io.Writer) *stack {
	t.Helper()
	ctx := context.Background()
	env := testenv.New(t)
	tel, err := telemetry.Setup(ctx, telemetry.Config{LogLevel: "warn", LogOutput: logs, SpanExporter: exp})
	require.NoError(t, err)
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })

	pool, err := pg.Open(ctx, pg.Config{URL: env.DatabaseURL, Schema: env.Schema, Tweak: tel.InstrumentPool})
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	opt, err := redis.ParseURL(env.RedisURL)
	require.NoError(t, err)
	opt.ContextTimeoutEnabled = true
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { rdb.Close() })
	require.NoError(t, tel.InstrumentRedis(rdb))
	f, err := fence.New(rdb, fence.Config{Prefix: env.Prefix})
	require.NoError(t, err)

	w, err := writer.New(writer.Config{Pool: pool, Fence: f, MeterProvider: tel.MeterProvider, Logger: tel.Logger})
	require.NoError(t, err)
	t.Cleanup(w.Close)
	mux := http.NewServeMux()
	mux.Handle("/metrics", tel.MetricsHandler)
	mux.Handle("/", writer.NewHandler(w, writer.HandlerConfig{MeterProvider: tel.MeterProvider}))
	srv := httptest.NewServer(tel.WrapHandler(mux))
	t.Cleanup(srv.Close)

	nc, err := nats.Connect(env.NATSURL)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	r, err := relay.New(relay.Config{
		Pool: pool, Fence: f, NATS: nc, Stream: env.Stream, SubjectPrefix: env.SubjectPrefix,
		Logger: tel.Logger, MeterProvider: tel.MeterProvider, TracerProvider: tel.TracerProvider,
		HousekeepingInterval: 50 * time.Millisecond, PollInterval: 50 * time.Millisecond,
		RetryInitial: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond, RepairGrace: 10 * time.Millisecond,
	})
	require.NoError(t, err)
	require.NoError(t, r.Start(ctx))
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = r.Stop(sctx)
	})
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return &stack{env: env, tel: tel, w: w, srv: srv, relay: r, js: js}
}

func (s *stack) do(t *testing.T, method, path, body string, header ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, s.srv.URL+path, strings.NewReader(body))
	require.NoError(t, err)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	if body != "" && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// event waits for the stream's last event on a subject.
func (s *stack) event(t *testing.T, subject string) *jetstream.RawStreamMsg {
	t.Helper()
	var msg *jetstream.RawStreamMsg
	testenv.Eventually(t, 15*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		st, err := s.js.Stream(ctx, s.env.Stream)
		if err != nil {
			return false
		}
		msg, err = st.GetLastMsgForSubject(ctx, subject)
		return err == nil
	}, "no event on %s", subject)
	return msg
}

// TestTelemetryTraceFollowsAWrite proves one trace links the HTTP request,
// its SQL statements, the Redis fence write and the relay's publish, and that
// the event carries the trace in ce-traceparent.
func TestTelemetryTraceFollowsAWrite(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	s := newStack(t, exp, io.Discard)
	resp := s.do(t, http.MethodPut, "/v1/users/42", `{"name":"Ada"}`)
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	msg := s.event(t, s.env.SubjectPrefix+".users.put")
	tp := msg.Header.Get("ce-traceparent")
	require.Regexp(t, `^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$`, tp)
	traceID, parentID := tp[3:35], tp[36:52]

	var spans tracetest.SpanStubs
	find := func(pred func(tracetest.SpanStub) bool) *tracetest.SpanStub {
		for i := range spans {
			if spans[i].SpanContext.TraceID().String() == traceID && pred(spans[i]) {
				return &spans[i]
			}
		}
		return nil
	}
	var httpSpan, sqlSpan, redisSpan, publishSpan *tracetest.SpanStub
	testenv.Eventually(t, 10*time.Second, func() bool {
		spans = exp.GetSpans()
		httpSpan = find(func(s tracetest.SpanStub) bool { return s.SpanKind == trace.SpanKindServer })
		if httpSpan == nil {
			return false
		}
		// child: a span of the scope under the HTTP span, directly or
		// through spans of its own (otelpgx nests statements of a batch).
		child := func(s tracetest.SpanStub, scope string) bool {
			if !strings.Contains(s.InstrumentationScope.Name, scope) {
				return false
			}
			for range len(spans) {
				if s.Parent.SpanID() == httpSpan.SpanContext.SpanID() {
					return true
				}
				p := find(func(x tracetest.SpanStub) bool { return x.SpanContext.SpanID() == s.Parent.SpanID() })
				if p == nil || !strings.Contains(p.InstrumentationScope.Name, scope) {
					return false
				}
				s = *p
			}
			return false
		}
		sqlSpan = find(func(s tracetest.SpanStub) bool { return child(s, "otelpgx") && s.Name == "INSERT" })
		redisSpan = find(func(s tracetest.SpanStub) bool { return child(s, "redisotel") && strings.Contains(s.Name, "evalsha") })
		publishSpan = find(func(s tracetest.SpanStub) bool {
			return strings.Contains(s.InstrumentationScope.Name, "relay") && s.Parent.SpanID().String() == parentID
		})
		return sqlSpan != nil && redisSpan != nil && publishSpan != nil
	}, "spans of trace %s: %s", traceID, testenv.Lazy(func() string { return describe(&spans) }))

	require.False(t, httpSpan.Parent.IsValid(), "the HTTP span is the root")
	require.True(t, strings.HasPrefix(httpSpan.Name, "PUT /v1/"), httpSpan.Name)
	require.Equal(t, httpSpan.SpanContext.SpanID().String(), parentID, "the outbox row stored the request's span")
	require.Equal(t, trace.SpanKindProducer, publishSpan.SpanKind, "the relay's publish span")
	require.Equal(t, traceID, publishSpan.SpanContext.TraceID().String(), "the publish span continues the write's trace")
}

func describe(spans *tracetest.SpanStubs) string {
	var b strings.Builder
	for _, s := range *spans {
		fmt.Fprintf(&b, "\n  %s %s [%s] parent %s scope %s", s.SpanContext.TraceID(), s.SpanContext.SpanID(), s.Name, s.Parent.SpanID(), s.InstrumentationScope.Name)
	}
	return b.String()
}

var sample = regexp.MustCompile(`(?m)^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})? ([0-9.eE+-]+|NaN|\+Inf)$`)

// scrape returns metric samples by name; each with its label text.
func scrape(t *testing.T, url string) map[string][]struct {
	labels string
	value  float64
} {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	out := map[string][]struct {
		labels string
		value  float64
	}{}
	for _, m := range sample.FindAllStringSubmatch(string(body), -1) {
		v, err := strconv.ParseFloat(m[3], 64)
		require.NoError(t, err)
		out[m[1]] = append(out[m[1]], struct {
			labels string
			value  float64
		}{m[2], v})
	}
	return out
}

// TestTelemetryMetricsAfterWorkload scrapes /metrics after a known workload
// and finds every metric on-call relies on with a sensible value.
func TestTelemetryMetricsAfterWorkload(t *testing.T) {
	s := newStack(t, tracetest.NewInMemoryExporter(), io.Discard)
	ctx := context.Background()
	// 5 writes, 3 cache hits, 2 misses (one absent, one deleted), one 412.
	for i := range 4 {
		require.Equal(t, http.StatusCreated, s.do(t, http.MethodPut, fmt.Sprintf("/v1/users/%d", i), `{"i":1}`).StatusCode)
	}
	require.Equal(t, http.StatusNoContent, s.do(t, http.MethodDelete, "/v1/users/3", "").StatusCode)
	for i := range 3 {
		require.Equal(t, http.StatusOK, s.do(t, http.MethodGet, fmt.Sprintf("/v1/users/%d", i), "").StatusCode)
	}
	require.Equal(t, http.StatusNotFound, s.do(t, http.MethodGet, "/v1/users/404", "").StatusCode)
	require.Equal(t, http.StatusPreconditionFailed, s.do(t, http.MethodPut, "/v1/users/0", `{}`, "If-Match", `"9"`).StatusCode)
	// A change too big for NATS becomes a dead letter.
	big := `{"blob":"` + strings.Repeat("x", 2<<20) + `"}`
	_, err := s.w.Do(ctx, func(tx writer.Tx) error {
		_, err := tx.Put(ctx, "blobs", "1", []byte(big))
		return err
	})
	require.NoError(t, err)
	// A cache write the relay must repair: flush a key and mark it pending.
	require.NoError(t, s.env.Redis.Del(ctx, s.env.Prefix+"users:1").Err())
	_, err = s.env.Pool.Exec(ctx, `UPDATE outbox SET cache_state = 'pending' WHERE collection = 'users' AND entity_id = '1'`)
	require.NoError(t, err)

	url := s.srv.URL + "/metrics"
	type sampleT = struct {
		labels string
		value  float64
	}
	sum := func(m map[string][]sampleT, name, label string) float64 {
		var n float64
		for _, s := range m[name] {
			if strings.Contains(s.labels, label) {
				n += s.value
			}
		}
		return n
	}
	var m map[string][]sampleT
	testenv.Eventually(t, 20*time.Second, func() bool {
		m = scrape(t, url)
		return sum(m, "writethrough_relay_events_published_total", "") >= 5 &&
			sum(m, "writethrough_relay_dead_letters_total", "") >= 1 &&
			sum(m, "writethrough_outbox_dead", "") >= 1 &&
			sum(m, "writethrough_relay_cache_repairs_total", "") >= 1
	}, "relay metrics never showed the workload")

	require.EqualValues(t, 5+1, sum(m, "writethrough_write_duration_seconds_count", `outcome="ok"`), "5 API writes and the blob")
	require.EqualValues(t, 1, sum(m, "writethrough_write_duration_seconds_count", `outcome="rejected"`))
	require.GreaterOrEqual(t, sum(m, "writethrough_cache_writes_total", `result="ok"`), 5.0)
	require.EqualValues(t, 3, sum(m, "writethrough_cache_reads_total", `result="hit"`))
	require.GreaterOrEqual(t, sum(m, "writethrough_cache_reads_total", `result="miss"`), 1.0)
	require.EqualValues(t, 4, sum(m, "http_server_request_duration_seconds_count", `http_response_status_code="201"`))
	require.EqualValues(t, 4, sum(m, "http_server_request_duration_seconds_count", `http_request_method="GET",http_response_status_code`))
	require.EqualValues(t, 1, sum(m, "http_server_request_duration_seconds_count", `http_request_method="GET",http_response_status_code="404",http_route="/v1/{collection}/{id}"`))
	require.EqualValues(t, 1, sum(m, "http_server_request_duration_seconds_count", `http_response_status_code="412"`))
	require.Contains(t, m, "writethrough_outbox_lag_seconds")
	require.GreaterOrEqual(t, sum(m, "writethrough_outbox_lag_seconds", ""), 0.0)
	require.GreaterOrEqual(t, sum(m, "writethrough_relay_events_published_total", ""), 5.0)
	require.EqualValues(t, 1, sum(m, "writethrough_outbox_dead", ""))
	// The oversized event is poison (dead at once), not a retry.
	require.Contains(t, m, "writethrough_relay_publish_retries_total")
	require.Zero(t, sum(m, "writethrough_relay_publish_retries_total", ""))
}

// Without tracing, a write still carries its caller's trace into the outbox
// entry and so into its event.
func TestTelemetryTracingOffCarriesIncomingTrace(t *testing.T) {
	t.Parallel()
	tel, err := telemetry.Setup(context.Background(), telemetry.Config{LogOutput: io.Discard, Getenv: func(string) string { return "" }})
	require.NoError(t, err)
	defer tel.Shutdown(context.Background()) //nolint:errcheck
	require.False(t, tel.Tracing)
	env := testenv.New(t)
	w, err := writer.New(writer.Config{Pool: env.Pool, Fence: env.Fence})
	require.NoError(t, err)
	defer w.Close()
	srv := httptest.NewServer(tel.WrapHandler(writer.NewHandler(w, writer.HandlerConfig{})))
	defer srv.Close()

	const incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	req, err := http.NewRequest("PUT", srv.URL+"/v1/users/traced", strings.NewReader(`{}`))
	require.NoError(t, err)
	req.Header.Set("traceparent", incoming)
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	var tp *string
	require.NoError(t, env.Pool.QueryRow(context.Background(), `SELECT traceparent FROM outbox WHERE entity_id = 'traced'`).Scan(&tp))
	require.NotNil(t, tp)
	require.Equal(t, incoming, *tp)
}

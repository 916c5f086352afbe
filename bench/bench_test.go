package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestLoadCountsRequestsInTheWindow(t *testing.T) {
	t.Parallel()
	var served atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		time.Sleep(time.Millisecond)
		if r.URL.Path == "/bad" {
			w.WriteHeader(http.StatusTeapot)
		}
	}))
	defer srv.Close()

	res, err := load{
		Conns: 4, Warmup: 50 * time.Millisecond, Duration: 300 * time.Millisecond,
		Request: func(w, n int) (*http.Request, error) { return http.NewRequest(http.MethodGet, srv.URL+"/ok", nil) },
		Check:   wantStatus(200),
	}.run(context.Background())
	require.NoError(t, err)
	require.Zero(t, res.Failed)
	require.Positive(t, res.Requests)
	// The warm-up's requests are served but not counted.
	require.Less(t, int64(res.Requests), served.Load())
	require.InDelta(t, float64(res.Requests)/0.3, res.RPS, 1)
	require.GreaterOrEqual(t, res.P50, time.Millisecond)
	require.LessOrEqual(t, res.P50, res.P90)
	require.LessOrEqual(t, res.P90, res.P99)

	res, err = load{
		Conns: 2, Duration: 100 * time.Millisecond,
		Request: func(w, n int) (*http.Request, error) { return http.NewRequest(http.MethodGet, srv.URL+"/bad", nil) },
		Check:   wantStatus(200),
	}.run(context.Background())
	require.NoError(t, err)
	require.Equal(t, res.Requests, res.Failed)
	require.ErrorContains(t, res.FirstErr, "status 418")
}

func TestLoadRefusesOtherHosts(t *testing.T) {
	t.Parallel()
	_, err := load{
		Conns: 1, Duration: 10 * time.Millisecond,
		Request: func(w, n int) (*http.Request, error) {
			return http.NewRequest(http.MethodGet, "http://example.com/", nil)
		},
	}.run(context.Background())
	require.ErrorIs(t, err, errNotLoopback)
}

func TestParsePgbench(t *testing.T) {
	t.Parallel()
	out := []byte(`pgbench (15.19 (Debian 15.19-0+deb12u1))
transaction type: /tmp/write.sql
number of clients: 8
number of transactions actually processed: 41234
number of failed transactions: 0 (0.000%)
latency average = 1.940 ms
initial connection time = 12.345 ms
tps = 4123.456789 (without initial connection time)
`)
	r, err := parsePgbench(out)
	require.NoError(t, err)
	require.InDelta(t, 4123.456789, r.TPS, 1e-6)
	require.Equal(t, 1940*time.Microsecond, r.Latency)
	_, err = parsePgbench([]byte("pgbench: error: connection refused"))
	require.Error(t, err)
}

func TestRatios(t *testing.T) {
	t.Parallel()
	r := report{
		put8: loadResult{RPS: 900}, pg8: pgbenchResult{TPS: 1000},
		put1: loadResult{P50: 3 * time.Millisecond}, pg1: pgbenchResult{Latency: 2 * time.Millisecond},
		get: loadResult{RPS: 700}, bare: loadResult{RPS: 1000},
	}
	rs := r.ratios()
	require.InDelta(t, 0.9, rs[0].value, 1e-9)
	require.True(t, rs[0].met())
	require.InDelta(t, 1.5, rs[1].value, 1e-9)
	require.True(t, rs[1].met())
	require.InDelta(t, 0.7, rs[2].value, 1e-9)
	require.False(t, rs[2].met())
}

package writer_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/internal/testenv"
	"github.com/writethrough/writethrough/writer"
)

// discard is a ResponseWriter that keeps nothing, so a benchmark measures
// the handler.
type discard struct{ h http.Header }

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(b []byte) (int, error) { return len(b), nil }
func (d *discard) WriteHeader(int)             {}

// BenchmarkHandlerGetHit is the cache-hit GET path, without the network.
func BenchmarkHandlerGetHit(b *testing.B) {
	env := testenv.New(b)
	w, err := writer.New(writer.Config{Pool: env.Pool, Fence: env.Fence})
	require.NoError(b, err)
	b.Cleanup(w.Close)
	h := writer.NewHandler(w, writer.HandlerConfig{})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("PUT", "/v1/users/42", strings.NewReader(`{"name":"Ada","tags":["a","b"]}`)))
	require.Equal(b, http.StatusCreated, rec.Code)

	req := httptest.NewRequest("GET", "/v1/users/42", nil)
	rw := &discard{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(rw.h)
		h.ServeHTTP(rw, req)
	}
	require.Equal(b, "hit", rw.h.Get("X-Cache"))
}

// BenchmarkBareHMGET is the floor the GET path is compared with: one HMGET.
func BenchmarkBareHMGET(b *testing.B) {
	env := testenv.New(b)
	ctx := context.Background()
	key := env.Prefix + "users:42"
	require.NoError(b, env.Redis.HSet(ctx, key, "v", "1", "d", `{"name": "Ada"}`, "u", "2026-01-01T00:00:00.000000Z").Err())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := env.Redis.HMGet(ctx, key, "v", "d", "u").Result(); err != nil {
			b.Fatal(err)
		}
	}
}

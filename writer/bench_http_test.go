package writer_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
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

// BenchmarkPutConcurrent is Writer.Put from 16 goroutines over 10k keys,
// with and without group commit.
func BenchmarkPutConcurrent(b *testing.B) {
	for _, size := range []int{1, 32} {
		b.Run(fmt.Sprintf("group=%d", size), func(b *testing.B) {
			env := testenv.New(b)
			w, err := writer.New(writer.Config{Pool: env.Pool, Fence: env.Fence, GroupSize: size})
			require.NoError(b, err)
			b.Cleanup(w.Close)
			var n atomic.Int64
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				for pb.Next() {
					id := strconv.FormatInt(n.Add(1)%10000, 10)
					if _, err := w.Put(ctx, "users", id, []byte(`{"name":"Ada"}`)); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

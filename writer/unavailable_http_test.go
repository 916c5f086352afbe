package writer_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/internal/pg"
	"github.com/writethrough/writethrough/internal/testenv"
	"github.com/writethrough/writethrough/writer"
)

// Postgres unreachable: 503 with Retry-After, nothing in Redis, and no
// connection details in the answer.
func TestHTTPPostgresUnreachable(t *testing.T) {
	t.Parallel()
	env := testenv.New(t)
	pool, err := pg.Open(context.Background(), pg.Config{URL: "postgres://postgres:hunter2@127.0.0.1:1/test?sslmode=disable&connect_timeout=2", Schema: env.Schema})
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	w, err := writer.New(writer.Config{Pool: pool, Fence: env.Fence, MaxAttempts: 1})
	require.NoError(t, err)
	t.Cleanup(w.Close)
	h := writer.NewHandler(w, writer.HandlerConfig{})

	reqs := []struct {
		method, target, body string
		hdr                  []string
	}{
		{"PUT", "/v1/users/1", `{"a":1}`, nil},
		{"PUT", "/v1/users/1", `{"a":1}`, []string{"Idempotency-Key", "k"}},
		{"PATCH", "/v1/users/1", `{"a":1}`, []string{"Content-Type", "application/merge-patch+json"}},
		{"DELETE", "/v1/users/1", ``, nil},
		{"POST", "/v1/_batch", `{"ops":[{"op":"put","collection":"users","id":"2","data":{}}]}`, nil},
		{"GET", "/v1/users/1", ``, nil},
	}
	for _, r := range reqs {
		rec := serve(t, h, r.method, r.target, r.body, r.hdr...)
		p := requireProblem(t, rec, http.StatusServiceUnavailable, "unavailable")
		require.NotEmpty(t, rec.Header().Get("Retry-After"))
		for _, leak := range []string{"127.0.0.1", "hunter2", "postgres://", "dial", "SELECT", "INSERT"} {
			require.NotContains(t, rec.Body.String(), leak, "%s %s: %s", r.method, r.target, p.Detail)
		}
	}
	// Client errors stay 4xx while Postgres is down.
	requireProblem(t, serve(t, h, "PUT", "/v1/users/1", `{"a":`), http.StatusBadRequest, "JSON")
	requireProblem(t, serve(t, h, "PATCH", "/v1/users/1", `{"a":`, "Content-Type", "application/merge-patch+json"), http.StatusBadRequest, "merge patch")
	requireProblem(t, serve(t, h, "POST", "/v1/_batch", `{"ops":[]}`), http.StatusBadRequest, "ops")
	requireProblem(t, serve(t, h, "PUT", "/v1/Users/1", `{}`), http.StatusBadRequest, "collection")
	requireProblem(t, serve(t, h, "GET", "/v1/users/a%01", ``), http.StatusBadRequest, "id")
	// With an Idempotency-Key too: the key's answer cannot be stored, and
	// the client error is still the answer.
	key := []string{"Idempotency-Key", "down"}
	requireProblem(t, serve(t, h, "PUT", "/v1/Users/1", `{}`, key...), http.StatusBadRequest, "collection")
	requireProblem(t, serve(t, h, "PUT", "/v1/users/1", `{}`, append(key, "Content-Type", "text/plain")...), http.StatusUnsupportedMediaType, "application/json")
	requireProblem(t, serve(t, h, "PUT", "/v1/users/1", `{}`, append(key, "If-Match", "bad")...), http.StatusBadRequest, "If-Match")
	requireProblem(t, serve(t, h, "POST", "/v1/_batch", `{"ops":[]}`, key...), http.StatusBadRequest, "ops")
	requireProblem(t, serve(t, h, "PUT", "/v1/users/1", strings.Repeat(" ", writer.DefaultMaxBodyBytes+1), key...), http.StatusRequestEntityTooLarge, "larger")

	keys, err := env.Redis.Keys(context.Background(), env.Prefix+"*").Result()
	require.NoError(t, err)
	require.Empty(t, keys, "nothing reached Redis")

	rec := serve(t, h, "GET", "/readyz", "")
	require.Equal(t, http.StatusServiceUnavailable, rec.Code)
	require.JSONEq(t, `{"status":"degraded","postgres":"down","redis":"ok"}`, rec.Body.String())
	require.Equal(t, http.StatusOK, serve(t, h, "GET", "/healthz", "").Code)
}

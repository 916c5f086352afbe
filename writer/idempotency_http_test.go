package writer_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/internal/testenv"
	"github.com/writethrough/writethrough/writer"
)

// requireReplay asserts that rec is a byte-identical replay of first.
func requireReplay(t *testing.T, first, rec *httptest.ResponseRecorder) {
	t.Helper()
	require.Equal(t, first.Code, rec.Code, rec.Body.String())
	require.Equal(t, first.Body.String(), rec.Body.String())
	for _, h := range []string{"Content-Type", "ETag", "X-Cache-Write", "Location", "Content-Length"} {
		require.Equal(t, first.Header().Values(h), rec.Header().Values(h), h)
	}
	require.Empty(t, first.Header().Get("Idempotent-Replayed"))
	require.Equal(t, "true", rec.Header().Get("Idempotent-Replayed"))
}

func TestHTTPIdempotencyReplay(t *testing.T) {
	t.Parallel()
	a := setupAPI(t, writer.HandlerConfig{})
	key := []string{"Idempotency-Key", "put-1"}

	first := a.do(t, "PUT", "/v1/users/i", `{"n":1}`, key...)
	require.Equal(t, http.StatusCreated, first.Code, first.Body.String())
	require.Equal(t, "ok", first.Header().Get("X-Cache-Write"))
	for range 2 {
		requireReplay(t, first, a.do(t, "PUT", "/v1/users/i", `{"n":1}`, key...))
	}
	require.Equal(t, []string{"1:put"}, a.outboxOps(t, "users", "i"), "a replay commits nothing")
	r, _ := a.row(t, "users", "i")
	require.EqualValues(t, 1, r.Version)

	// Same key, different body, method or target: 422, nothing committed.
	requireProblem(t, a.do(t, "PUT", "/v1/users/i", `{"n":2}`, key...), http.StatusUnprocessableEntity, "different request")
	requireProblem(t, a.do(t, "PUT", "/v1/users/j", `{"n":1}`, key...), http.StatusUnprocessableEntity, "different request")
	requireProblem(t, a.do(t, "DELETE", "/v1/users/i", ``, key...), http.StatusUnprocessableEntity, "different request")
	requireProblem(t, a.do(t, "PUT", "/v1/users/i", `{"n":1}`, append(key, "If-Match", `"1"`)...), http.StatusUnprocessableEntity, "different request")
	require.Equal(t, []string{"1:put"}, a.outboxOps(t, "users", "i"))
	_, ok := a.row(t, "users", "j")
	require.False(t, ok)

	// PATCH, DELETE and batches replay too.
	const mp = "application/merge-patch+json"
	first = a.do(t, "PATCH", "/v1/users/i", `{"m":2}`, "Content-Type", mp, "Idempotency-Key", "patch-1")
	require.Equal(t, http.StatusOK, first.Code, first.Body.String())
	requireReplay(t, first, a.do(t, "PATCH", "/v1/users/i", `{"m":2}`, "Content-Type", mp, "Idempotency-Key", "patch-1"))

	batch := `{"ops":[{"op":"put","collection":"users","id":"b","data":1},{"op":"put","collection":"users","id":"b","data":2}]}`
	first = a.do(t, "POST", "/v1/_batch", batch, "Idempotency-Key", "batch-1")
	require.Equal(t, http.StatusOK, first.Code, first.Body.String())
	require.Contains(t, first.Body.String(), `"cache_write":"ok"`)
	requireReplay(t, first, a.do(t, "POST", "/v1/_batch", batch, "Idempotency-Key", "batch-1"))
	require.Equal(t, []string{"1:put", "2:put"}, a.outboxOps(t, "users", "b"))

	first = a.do(t, "DELETE", "/v1/users/i", ``, "Idempotency-Key", "delete-1")
	require.Equal(t, http.StatusNoContent, first.Code, first.Body.String())
	requireReplay(t, first, a.do(t, "DELETE", "/v1/users/i", ``, "Idempotency-Key", "delete-1"))
	require.Equal(t, []string{"1:put", "2:put", "3:delete"}, a.outboxOps(t, "users", "i"))

	// A 4xx is stored as well: the retry gets the same 404 although the
	// entity exists by now.
	first = a.do(t, "PATCH", "/v1/users/later", `{"m":2}`, "Content-Type", mp, "Idempotency-Key", "patch-404")
	requireProblem(t, first, http.StatusNotFound, "does not exist")
	require.Equal(t, http.StatusCreated, a.do(t, "PUT", "/v1/users/later", `{}`).Code)
	requireReplay(t, first, a.do(t, "PATCH", "/v1/users/later", `{"m":2}`, "Content-Type", mp, "Idempotency-Key", "patch-404"))
	require.Equal(t, []string{"1:put"}, a.outboxOps(t, "users", "later"))
}

func TestHTTPIdempotencyKeyChecks(t *testing.T) {
	t.Parallel()
	a := setupAPI(t, writer.HandlerConfig{})
	for _, bad := range []string{"", strings.Repeat("k", 256), "tab\there", "ünicode", "nul\x00"} {
		requireProblem(t, a.do(t, "PUT", "/v1/users/k", `{}`, "Idempotency-Key", bad), http.StatusBadRequest, "Idempotency-Key")
	}
	requireProblem(t, a.do(t, "PUT", "/v1/users/k", `{}`, "Idempotency-Key", "a", "Idempotency-Key", "b"), http.StatusBadRequest, "Idempotency-Key")
	a.requireNothingStored(t)
	require.Zero(t, a.count(t, `SELECT count(*) FROM idempotency`))

	// The longest key, with spaces and punctuation, is fine.
	long := strings.Repeat("k", 250) + " ~!:/"
	rec := a.do(t, "PUT", "/v1/users/k", `{}`, "Idempotency-Key", long)
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	requireReplay(t, rec, a.do(t, "PUT", "/v1/users/k", `{}`, "Idempotency-Key", long))
}

func TestHTTPIdempotencyExpiredKeyIsAbsent(t *testing.T) {
	t.Parallel()
	a := setupAPI(t, writer.HandlerConfig{})
	key := []string{"Idempotency-Key", "old-key"}
	require.Equal(t, http.StatusCreated, a.do(t, "PUT", "/v1/users/e", `{}`, key...).Code)
	_, err := a.env.Pool.Exec(context.Background(), `UPDATE idempotency SET expires_at = now() - interval '1 second' WHERE key = 'old-key'`)
	require.NoError(t, err)

	// Even a different body is fine: the old answer is gone.
	rec := a.do(t, "PUT", "/v1/users/e", `{"n":2}`, key...)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Empty(t, rec.Header().Get("Idempotent-Replayed"))
	require.Equal(t, []string{"1:put", "2:put"}, a.outboxOps(t, "users", "e"))
	requireReplay(t, rec, a.do(t, "PUT", "/v1/users/e", `{"n":2}`, key...))
}

func TestHTTPIdempotencyInFlight(t *testing.T) {
	t.Parallel()
	a := setupAPI(t, writer.HandlerConfig{})
	ctx := context.Background()
	require.Equal(t, http.StatusCreated, a.do(t, "PUT", "/v1/users/f", `{"n":1}`).Code)

	// Hold the entity's row lock so the first request stays in flight.
	tx, err := a.env.Pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck
	_, err = tx.Exec(ctx, `SELECT 1 FROM entities WHERE collection = 'users' AND id = 'f' FOR UPDATE`)
	require.NoError(t, err)

	key := []string{"Idempotency-Key", "slow"}
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() { done <- serve(t, a.h, "PUT", "/v1/users/f", `{"n":2}`, key...) }()
	testenv.Eventually(t, 10*time.Second, func() bool {
		return a.count(t, `SELECT count(*) FROM idempotency WHERE key = 'slow' AND state = 'inflight'`) == 1
	}, "the first request claimed the key")

	requireProblem(t, a.do(t, "PUT", "/v1/users/f", `{"n":2}`, key...), http.StatusConflict, "in flight")
	requireProblem(t, a.do(t, "PUT", "/v1/users/f", `{"n":3}`, key...), http.StatusUnprocessableEntity, "different request")

	require.NoError(t, tx.Commit(ctx))
	first := <-done
	require.Equal(t, http.StatusOK, first.Code, first.Body.String())
	requireReplay(t, first, a.do(t, "PUT", "/v1/users/f", `{"n":2}`, key...))
	require.Equal(t, []string{"1:put", "2:put"}, a.outboxOps(t, "users", "f"))
}

func TestHTTPIdempotencyConcurrentDuplicatesCommitOnce(t *testing.T) {
	t.Parallel()
	a := setupAPI(t, writer.HandlerConfig{})
	const n = 16
	recs := make([]*httptest.ResponseRecorder, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			recs[i] = serve(t, a.h, "POST", "/v1/_batch", `{"ops":[{"op":"put","collection":"users","id":"c","data":{}}]}`, "Idempotency-Key", "dup")
		})
	}
	close(start)
	wg.Wait()

	var original *httptest.ResponseRecorder
	for _, rec := range recs {
		switch {
		case rec.Code == http.StatusConflict:
			requireProblem(t, rec, http.StatusConflict, "in flight")
		case rec.Header().Get("Idempotent-Replayed") == "":
			require.Nil(t, original, "one original answer")
			original = rec
		}
	}
	require.NotNil(t, original)
	require.Equal(t, http.StatusOK, original.Code, original.Body.String())
	for _, rec := range recs {
		if rec != original && rec.Code != http.StatusConflict {
			requireReplay(t, original, rec)
		}
	}
	require.Equal(t, []string{"1:put"}, a.outboxOps(t, "users", "c"), "committed once")
}

// A 5xx is not stored: the retry runs again.
func TestHTTPIdempotencyServerErrorIsNotStored(t *testing.T) {
	t.Parallel()
	a := setupAPI(t, writer.HandlerConfig{})
	ctx := context.Background()
	_, err := a.env.Pool.Exec(ctx, `
CREATE FUNCTION fail_boom() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id = 'boom' THEN RAISE EXCEPTION 'secret detail from SELECT boom' USING ERRCODE = 'XX000'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fail_boom BEFORE INSERT OR UPDATE ON entities FOR EACH ROW EXECUTE FUNCTION fail_boom();`)
	require.NoError(t, err)

	key := []string{"Idempotency-Key", "boom-1"}
	rec := a.do(t, "PUT", "/v1/users/boom", `{}`, key...)
	p := requireProblem(t, rec, http.StatusServiceUnavailable, "")
	require.NotContains(t, p.Detail, "secret")
	require.NotContains(t, rec.Body.String(), "SELECT")
	require.NotEmpty(t, rec.Header().Get("Retry-After"))
	require.Zero(t, a.count(t, `SELECT count(*) FROM idempotency`), "the claim was released")
	a.requireNothingStored(t)

	_, err = a.env.Pool.Exec(ctx, `DROP TRIGGER fail_boom ON entities`)
	require.NoError(t, err)
	rec = a.do(t, "PUT", "/v1/users/boom", `{}`, key...)
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	require.Empty(t, rec.Header().Get("Idempotent-Replayed"))
	require.Equal(t, []string{"1:put"}, a.outboxOps(t, "users", "boom"))
}

// A claim whose request died before recording an answer is taken over once
// the lease has passed; a committed answer whose settle never ran is
// replayed once the lease has passed, and blocks duplicates until then.
func TestHTTPIdempotencyAbandonedClaims(t *testing.T) {
	t.Parallel()
	a := setupAPI(t, writer.HandlerConfig{})
	short := writer.NewHandler(a.w, writer.HandlerConfig{IdempotencyLease: time.Millisecond})
	ctx := context.Background()

	// Abandoned before commit: nothing recorded.
	first := a.do(t, "PUT", "/v1/users/ab", `{}`, "Idempotency-Key", "abandoned")
	require.Equal(t, http.StatusCreated, first.Code)
	_, err := a.env.Pool.Exec(ctx, `UPDATE idempotency SET state = 'inflight', status = NULL, headers = NULL, body = NULL, created_at = now() - interval '1 second' WHERE key = 'abandoned'`)
	require.NoError(t, err)
	requireProblem(t, a.do(t, "PUT", "/v1/users/ab", `{}`, "Idempotency-Key", "abandoned"), http.StatusConflict, "in flight")
	rec := serve(t, short, "PUT", "/v1/users/ab", `{}`, "Idempotency-Key", "abandoned")
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Empty(t, rec.Header().Get("Idempotent-Replayed"), "the retry ran")
	require.Equal(t, []string{"1:put", "2:put"}, a.outboxOps(t, "users", "ab"))

	// Committed, settle lost: the answer recorded in the transaction is
	// replayed, with X-Cache-Write: pending.
	first = a.do(t, "PUT", "/v1/users/cs", `{}`, "Idempotency-Key", "crashed")
	require.Equal(t, http.StatusCreated, first.Code)
	_, err = a.env.Pool.Exec(ctx, `UPDATE idempotency SET state = 'inflight', headers = jsonb_set(headers, '{X-Cache-Write}', '"pending"') WHERE key = 'crashed'`)
	require.NoError(t, err)
	requireProblem(t, a.do(t, "PUT", "/v1/users/cs", `{}`, "Idempotency-Key", "crashed"), http.StatusConflict, "in flight")
	rec = serve(t, short, "PUT", "/v1/users/cs", `{}`, "Idempotency-Key", "crashed")
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	require.Equal(t, "true", rec.Header().Get("Idempotent-Replayed"))
	require.Equal(t, "pending", rec.Header().Get("X-Cache-Write"))
	require.Equal(t, first.Body.String(), rec.Body.String())
	require.Equal(t, first.Header().Get("ETag"), rec.Header().Get("ETag"))
	require.Equal(t, []string{"1:put"}, a.outboxOps(t, "users", "cs"), "committed once")
}

func TestHTTPIdempotencyClientErrorsReplay(t *testing.T) {
	t.Parallel()
	a := setupAPI(t, writer.HandlerConfig{MaxBodyBytes: 64})
	big := `{"pad":"` + strings.Repeat("x", 100) + `"}`

	// A body over the limit is a 4xx like any other: stored and replayed.
	first := a.do(t, "PUT", "/v1/users/big", big, "Idempotency-Key", "big-1")
	requireProblem(t, first, http.StatusRequestEntityTooLarge, "larger than 64 bytes")
	requireReplay(t, first, a.do(t, "PUT", "/v1/users/big", big, "Idempotency-Key", "big-1"))
	// A body within the limit is a different request.
	requireProblem(t, a.do(t, "PUT", "/v1/users/big", `{}`, "Idempotency-Key", "big-1"), http.StatusUnprocessableEntity, "different request")

	first = a.do(t, "PUT", "/v1/users/bad", `{"a":`, "Idempotency-Key", "bad-1")
	requireProblem(t, first, http.StatusBadRequest, "JSON")
	requireReplay(t, first, a.do(t, "PUT", "/v1/users/bad", `{"a":`, "Idempotency-Key", "bad-1"))

	// A charset parameter or letter case does not make a different request.
	first = a.do(t, "PUT", "/v1/users/ct", `{"a":1}`, "Idempotency-Key", "ct-1", "Content-Type", "application/json")
	require.Equal(t, http.StatusCreated, first.Code, first.Body.String())
	requireReplay(t, first, a.do(t, "PUT", "/v1/users/ct", `{"a":1}`, "Idempotency-Key", "ct-1", "Content-Type", "Application/JSON; charset=utf-8"))
	requireProblem(t, a.do(t, "PUT", "/v1/users/ct", `{"a":1}`, "Idempotency-Key", "ct-1", "Content-Type", "application/vnd.x+json"), http.StatusUnprocessableEntity, "different request")

	for _, id := range []string{"big", "bad"} {
		_, ok := a.row(t, "users", id)
		require.False(t, ok, id)
		require.Empty(t, a.cache(t, "users", id), id)
	}
	require.Equal(t, []string{"1:put"}, a.outboxOps(t, "users", "ct"))
}

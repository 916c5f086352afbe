package writer_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/internal/fence"
	"github.com/writethrough/writethrough/internal/testenv"
	"github.com/writethrough/writethrough/writer"
)

type apiBundle struct {
	*bundle
	h http.Handler
}

func setupAPI(t *testing.T, cfg writer.HandlerConfig) *apiBundle {
	t.Helper()
	b := setup(t)
	return &apiBundle{bundle: b, h: writer.NewHandler(b.w, cfg)}
}

// do sends one request through the handler; hdr holds header name/value pairs.
func (a *apiBundle) do(t *testing.T, method, target, body string, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	return serve(t, a.h, method, target, body, hdr...)
}

func serve(t *testing.T, h http.Handler, method, target, body string, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, r)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// row is an entity row as Postgres holds it.
type row struct {
	Version int64
	Data    *string
	Deleted bool
}

func (a *apiBundle) row(t *testing.T, collection, id string) (row, bool) {
	t.Helper()
	var r row
	err := a.env.Pool.QueryRow(context.Background(),
		`SELECT version, data::text, deleted FROM entities WHERE collection = $1 AND id = $2`, collection, id).
		Scan(&r.Version, &r.Data, &r.Deleted)
	if err != nil && strings.Contains(err.Error(), "no rows") {
		return row{}, false
	}
	require.NoError(t, err)
	return r, true
}

func (a *apiBundle) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, a.env.Pool.QueryRow(context.Background(), sql, args...).Scan(&n))
	return n
}

func (a *apiBundle) outboxCount(t *testing.T) int {
	return a.count(t, `SELECT count(*) FROM outbox`)
}

// outboxVersions lists the outbox versions and ops of one key in order.
func (a *apiBundle) outboxOps(t *testing.T, collection, id string) []string {
	t.Helper()
	rows, err := a.env.Pool.Query(context.Background(),
		`SELECT version::text || ':' || op FROM outbox WHERE collection = $1 AND entity_id = $2 ORDER BY seq`, collection, id)
	require.NoError(t, err)
	var out []string
	for rows.Next() {
		var s string
		require.NoError(t, rows.Scan(&s))
		out = append(out, s)
	}
	require.NoError(t, rows.Err())
	return out
}

func (a *apiBundle) cache(t *testing.T, collection, id string) map[string]string {
	t.Helper()
	h, err := a.env.Redis.HGetAll(context.Background(), a.env.Prefix+collection+":"+id).Result()
	require.NoError(t, err)
	return h
}

func (a *apiBundle) cacheKeys(t *testing.T) []string {
	t.Helper()
	keys, err := a.env.Redis.Keys(context.Background(), a.env.Prefix+"*").Result()
	require.NoError(t, err)
	return keys
}

// requireNothingStored asserts that no entity, outbox entry or cache key exists.
func (a *apiBundle) requireNothingStored(t *testing.T) {
	t.Helper()
	require.Zero(t, a.count(t, `SELECT count(*) FROM entities`), "entities")
	require.Zero(t, a.outboxCount(t), "outbox entries")
	require.Empty(t, a.cacheKeys(t), "cache keys")
}

type problemBody struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

func requireProblem(t *testing.T, rec *httptest.ResponseRecorder, status int, detailHas string) problemBody {
	t.Helper()
	require.Equal(t, status, rec.Code, rec.Body.String())
	require.Equal(t, "application/problem+json", rec.Header().Get("Content-Type"))
	var p problemBody
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &p), rec.Body.String())
	require.Equal(t, status, p.Status)
	require.NotEmpty(t, p.Type)
	require.NotEmpty(t, p.Title)
	require.Contains(t, p.Detail, detailHas)
	return p
}

type entityBody struct {
	Collection string          `json:"collection"`
	ID         string          `json:"id"`
	Version    int64           `json:"version"`
	Data       json.RawMessage `json:"data"`
	UpdatedAt  string          `json:"updated_at"`
	Deleted    bool            `json:"deleted"`
}

func decodeEntity(t *testing.T, b []byte) entityBody {
	t.Helper()
	var e entityBody
	require.NoError(t, json.Unmarshal(b, &e), string(b))
	return e
}

// unreachableRedis returns a fence over a Redis that refuses connections.
func unreachableRedis(t *testing.T, prefix string) *fence.Fence {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, ContextTimeoutEnabled: true})
	t.Cleanup(func() { rdb.Close() })
	f, err := fence.New(rdb, fence.Config{Prefix: prefix})
	require.NoError(t, err)
	return f
}

func TestHTTPRoundTrip(t *testing.T) {
	t.Parallel()
	a := setupAPI(t, writer.HandlerConfig{})

	rec := a.do(t, "PUT", "/v1/users/42", `{"name":"Ada"}`, "Content-Type", "application/json")
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	require.Equal(t, `"1"`, rec.Header().Get("ETag"))
	require.Equal(t, "ok", rec.Header().Get("X-Cache-Write"))
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	require.Equal(t, "/v1/users/42", rec.Header().Get("Location"))
	e := decodeEntity(t, rec.Body.Bytes())
	require.Equal(t, entityBody{Collection: "users", ID: "42", Version: 1, Data: json.RawMessage(`{"name": "Ada"}`), UpdatedAt: e.UpdatedAt}, e)
	require.Regexp(t, `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$`, e.UpdatedAt)

	r, ok := a.row(t, "users", "42")
	require.True(t, ok)
	require.Equal(t, row{Version: 1, Data: ptr(`{"name": "Ada"}`)}, r)
	require.Equal(t, []string{"1:put"}, a.outboxOps(t, "users", "42"))
	require.Equal(t, map[string]string{"v": "1", "d": `{"name": "Ada"}`, "u": e.UpdatedAt}, a.cache(t, "users", "42"))

	// A PUT of the same data replaces: 200, a new version.
	rec = a.do(t, "PUT", "/v1/users/42", `{"name":"Ada"}`)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, `"2"`, rec.Header().Get("ETag"))
	require.Empty(t, rec.Header().Get("Location"))
	put2 := rec.Body.String()

	// GET from the cache is byte-identical to the write's answer.
	rec = a.do(t, "GET", "/v1/users/42", "")
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "hit", rec.Header().Get("X-Cache"))
	require.Equal(t, `"2"`, rec.Header().Get("ETag"))
	require.Equal(t, put2, rec.Body.String())

	// If-None-Match with the current tag (weak comparison) is 304.
	for _, tag := range []string{`"2"`, `W/"2"`, `"1", "2"`, `*`} {
		rec = a.do(t, "GET", "/v1/users/42", "", "If-None-Match", tag)
		require.Equal(t, http.StatusNotModified, rec.Code, tag)
		require.Equal(t, `"2"`, rec.Header().Get("ETag"))
		require.Empty(t, rec.Body.String())
	}
	rec = a.do(t, "GET", "/v1/users/42", "", "If-None-Match", `"1"`)
	require.Equal(t, http.StatusOK, rec.Code)

	rec = a.do(t, "DELETE", "/v1/users/42", "")
	require.Equal(t, http.StatusNoContent, rec.Code, rec.Body.String())
	require.Equal(t, `"3"`, rec.Header().Get("ETag"))
	require.Equal(t, "ok", rec.Header().Get("X-Cache-Write"))
	require.Empty(t, rec.Body.String())
	r, _ = a.row(t, "users", "42")
	require.Equal(t, row{Version: 3, Deleted: true}, r)
	h := a.cache(t, "users", "42")
	require.Equal(t, "3", h["v"])
	require.NotContains(t, h, "d")

	requireProblem(t, a.do(t, "GET", "/v1/users/42", ""), http.StatusNotFound, "does not exist")
	requireProblem(t, a.do(t, "DELETE", "/v1/users/42", ""), http.StatusNotFound, "does not exist")
	requireProblem(t, a.do(t, "PATCH", "/v1/users/42", `{"a":1}`, "Content-Type", "application/merge-patch+json"), http.StatusNotFound, "does not exist")

	// Re-created: 201, the sequence continues.
	rec = a.do(t, "PUT", "/v1/users/42", `[1, 2.50]`, "Content-Type", "application/vnd.api+json")
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	require.Equal(t, `"4"`, rec.Header().Get("ETag"))
	require.Equal(t, []string{"1:put", "2:put", "3:delete", "4:put"}, a.outboxOps(t, "users", "42"))
	require.Equal(t, `[1, 2.50]`, a.cache(t, "users", "42")["d"])
}

func ptr[T any](v T) *T { return &v }

func TestHTTPGetMissFillsCache(t *testing.T) {
	t.Parallel()
	a := setupAPI(t, writer.HandlerConfig{})
	require.Equal(t, http.StatusCreated, a.do(t, "PUT", "/v1/docs/d1", `{"x": [1, 2]}`).Code)
	want := a.cache(t, "docs", "d1")
	require.NoError(t, a.env.Redis.Del(context.Background(), a.env.Prefix+"docs:d1").Err())

	rec := a.do(t, "GET", "/v1/docs/d1", "")
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "miss", rec.Header().Get("X-Cache"))
	miss := rec.Body.String()
	require.Equal(t, want, a.cache(t, "docs", "d1"), "the miss filled the cache")

	rec = a.do(t, "GET", "/v1/docs/d1", "")
	require.Equal(t, "hit", rec.Header().Get("X-Cache"))
	require.Equal(t, miss, rec.Body.String())

	// The same read through the mux (an escaped path) answers the same.
	rec = a.do(t, "GET", "/v1/docs/%64%31", "")
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, miss, rec.Body.String())
	require.Equal(t, `"1"`, rec.Header().Get("ETag"))
	require.Equal(t, "hit", rec.Header().Get("X-Cache"))
	rec = a.do(t, "GET", "/v1/docs/./d1", "")
	require.Equal(t, http.StatusTemporaryRedirect, rec.Code, "unclean paths are the mux's")

	// HEAD answers the headers only.
	rec = a.do(t, "HEAD", "/v1/docs/d1", "")
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, `"1"`, rec.Header().Get("ETag"))
	require.Equal(t, strconv.Itoa(len(miss)), rec.Header().Get("Content-Length"))
	require.Empty(t, rec.Body.String())
}

func TestHTTPPatch(t *testing.T) {
	t.Parallel()
	a := setupAPI(t, writer.HandlerConfig{})
	require.Equal(t, http.StatusCreated, a.do(t, "PUT", "/v1/users/7", `{"name":"Ada","tags":["a"],"age":36}`).Code)

	rec := a.do(t, "PATCH", "/v1/users/7", `{"age":null,"tags":["b"],"lang":"en"}`, "Content-Type", "application/merge-patch+json; charset=utf-8")
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, `"2"`, rec.Header().Get("ETag"))
	require.Equal(t, "ok", rec.Header().Get("X-Cache-Write"))
	e := decodeEntity(t, rec.Body.Bytes())
	require.JSONEq(t, `{"name":"Ada","tags":["b"],"lang":"en"}`, string(e.Data))
	r, _ := a.row(t, "users", "7")
	require.Equal(t, string(e.Data), *r.Data)
	require.Equal(t, string(e.Data), a.cache(t, "users", "7")["d"])
	require.Equal(t, []string{"1:put", "2:put"}, a.outboxOps(t, "users", "7"))

	// The wrong media type is 415 and names the right one.
	for _, ct := range []string{"", "application/json", "text/plain"} {
		hdr := []string{}
		if ct != "" {
			hdr = []string{"Content-Type", ct}
		}
		requireProblem(t, a.do(t, "PATCH", "/v1/users/7", `{"a":1}`, hdr...), http.StatusUnsupportedMediaType, "application/merge-patch+json")
	}
	// A bad merge patch is 400.
	requireProblem(t, a.do(t, "PATCH", "/v1/users/7", `{"a":`, "Content-Type", "application/merge-patch+json"), http.StatusBadRequest, "merge patch")
	requireProblem(t, a.do(t, "PATCH", "/v1/users/7", `{} x`, "Content-Type", "application/merge-patch+json"), http.StatusBadRequest, "merge patch")

	r, _ = a.row(t, "users", "7")
	require.EqualValues(t, 2, r.Version, "nothing committed by the rejected patches")
	require.Equal(t, "2", a.cache(t, "users", "7")["v"])
	require.Len(t, a.outboxOps(t, "users", "7"), 2)
}

func TestHTTPPreconditions(t *testing.T) {
	t.Parallel()
	a := setupAPI(t, writer.HandlerConfig{})
	const ct = "application/merge-patch+json"

	// If-None-Match: * creates only.
	rec := a.do(t, "PUT", "/v1/users/p", `{"v":1}`, "If-None-Match", "*")
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	requireProblem(t, a.do(t, "PUT", "/v1/users/p", `{"v":2}`, "If-None-Match", "*"), http.StatusPreconditionFailed, "If-Match")
	// If-None-Match: * fails wherever the entity exists, DELETE included; on
	// an absent entity a DELETE has nothing to delete.
	requireProblem(t, a.do(t, "DELETE", "/v1/users/p", "", "If-None-Match", "*"), http.StatusPreconditionFailed, "")
	requireProblem(t, a.do(t, "PATCH", "/v1/users/p", `{"v":2}`, "If-None-Match", "*", "Content-Type", ct), http.StatusPreconditionFailed, "")
	requireProblem(t, a.do(t, "DELETE", "/v1/users/absent", "", "If-None-Match", "*"), http.StatusNotFound, "")

	// If-Match: "N" needs the current version; weak tags never match.
	requireProblem(t, a.do(t, "PUT", "/v1/users/p", `{"v":2}`, "If-Match", `"2"`), http.StatusPreconditionFailed, "")
	requireProblem(t, a.do(t, "PUT", "/v1/users/p", `{"v":2}`, "If-Match", `W/"1"`), http.StatusPreconditionFailed, "")
	requireProblem(t, a.do(t, "PATCH", "/v1/users/p", `{"v":2}`, "If-Match", `"5"`, "Content-Type", ct), http.StatusPreconditionFailed, "")
	requireProblem(t, a.do(t, "DELETE", "/v1/users/p", "", "If-Match", `"5"`), http.StatusPreconditionFailed, "")
	requireProblem(t, a.do(t, "GET", "/v1/users/p", "", "If-Match", `"5"`), http.StatusPreconditionFailed, "")
	requireProblem(t, a.do(t, "PUT", "/v1/users/absent", `{}`, "If-Match", "*"), http.StatusPreconditionFailed, "")
	requireProblem(t, a.do(t, "PUT", "/v1/users/absent", `{}`, "If-Match", `"1"`), http.StatusPreconditionFailed, "")
	_, ok := a.row(t, "users", "absent")
	require.False(t, ok)
	r, _ := a.row(t, "users", "p")
	require.EqualValues(t, 1, r.Version, "nothing committed by failed preconditions")
	require.Equal(t, "1", a.cache(t, "users", "p")["v"])

	rec = a.do(t, "PUT", "/v1/users/p", `{"v":2}`, "If-Match", `"1"`)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	rec = a.do(t, "PATCH", "/v1/users/p", `{"w":3}`, "If-Match", `*`, "Content-Type", ct)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	// A list of tags matches any of them; If-None-Match with tags refuses a
	// write over a matching version.
	rec = a.do(t, "PUT", "/v1/users/p", `{"v":4}`, "If-Match", `"9", W/"3", "3"`)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, `"4"`, rec.Header().Get("ETag"))
	requireProblem(t, a.do(t, "PUT", "/v1/users/p", `{"v":5}`, "If-None-Match", `W/"4"`), http.StatusPreconditionFailed, "")
	rec = a.do(t, "PUT", "/v1/users/p", `{"v":5}`, "If-None-Match", `"3"`)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	rec = a.do(t, "DELETE", "/v1/users/p", "", "If-Match", `"5"`)
	require.Equal(t, http.StatusNoContent, rec.Code, rec.Body.String())
	require.Equal(t, `"6"`, rec.Header().Get("ETag"))

	// A malformed header is 400, before anything runs.
	for _, bad := range []string{`1`, `"1`, `W/1`, `"1" "2"`, `*, "1"`, ``, `"a b"`} {
		requireProblem(t, a.do(t, "PUT", "/v1/users/q", `{}`, "If-Match", bad), http.StatusBadRequest, "If-Match")
		requireProblem(t, a.do(t, "GET", "/v1/users/q", "", "If-None-Match", bad), http.StatusBadRequest, "If-None-Match")
	}
	_, ok = a.row(t, "users", "q")
	require.False(t, ok)
	require.Equal(t, []string{"1:put", "2:put", "3:put", "4:put", "5:put", "6:delete"}, a.outboxOps(t, "users", "p"))
}

func TestHTTPRejectsBadInput(t *testing.T) {
	t.Parallel()
	a := setupAPI(t, writer.HandlerConfig{MaxBodyBytes: 64})
	big := `{"s":"` + strings.Repeat("x", 100) + `"}`
	cases := []struct {
		name, method, target, body string
		hdr                        []string
		status                     int
		detail                     string
	}{
		{"bad JSON", "PUT", "/v1/users/1", `{"name":`, nil, 400, "JSON"},
		{"two values", "PUT", "/v1/users/1", `{} {}`, nil, 400, "JSON"},
		{"empty body", "PUT", "/v1/users/1", ``, nil, 400, "JSON"},
		{"NUL in a string", "PUT", "/v1/users/1", `{"a":"\u0000"}`, nil, 400, "data"},
		{"oversized", "PUT", "/v1/users/1", big, nil, 413, "64 bytes"},
		{"oversized patch", "PATCH", "/v1/users/1", big, []string{"Content-Type", "application/merge-patch+json"}, 413, "64 bytes"},
		{"oversized batch", "POST", "/v1/_batch", big, nil, 413, "64 bytes"},
		{"upper-case collection", "PUT", "/v1/Users/1", `{}`, nil, 400, "collection"},
		{"reserved collection", "PUT", "/v1/_users/1", `{}`, nil, 400, "collection"},
		{"long collection", "PUT", "/v1/" + strings.Repeat("a", 64) + "/1", `{}`, nil, 400, "collection"},
		{"control character in id", "PUT", "/v1/users/a%01b", `{}`, nil, 400, "id"},
		{"bad UTF-8 in id", "PUT", "/v1/users/a%FFb", `{}`, nil, 400, "id"},
		{"long id", "PUT", "/v1/users/" + strings.Repeat("i", 513), `{}`, nil, 400, "id"},
		{"bad id on GET", "GET", "/v1/users/a%7Fb", ``, nil, 400, "id"},
		{"text body", "PUT", "/v1/users/1", `{}`, []string{"Content-Type", "text/plain"}, 415, "application/json"},
		{"form body", "PUT", "/v1/users/1", `{}`, []string{"Content-Type", "application/x-www-form-urlencoded"}, 415, "application/json"},
		{"bad content type", "PUT", "/v1/users/1", `{}`, []string{"Content-Type", "///"}, 415, "application/json"},
		{"text batch", "POST", "/v1/_batch", `{}`, []string{"Content-Type", "text/plain"}, 415, "application/json"},
		{"suffix without a type", "PUT", "/v1/users/1", `{}`, []string{"Content-Type", "+json"}, 415, "application/json"},
		{"suffix without a name", "PUT", "/v1/users/1", `{}`, []string{"Content-Type", "application/+json"}, 415, "application/json"},
	}
	for _, c := range cases {
		rec := a.do(t, c.method, c.target, c.body, c.hdr...)
		requireProblem(t, rec, c.status, c.detail)
	}
	a.requireNothingStored(t)
}

func TestHTTPPercentEncodedIDs(t *testing.T) {
	t.Parallel()
	a := setupAPI(t, writer.HandlerConfig{})
	// Through a real server, so the client's encoding is what the mux sees.
	srv := httptest.NewServer(a.h)
	t.Cleanup(srv.Close)
	ids := map[string]string{
		"a/b/c":     "a%2Fb%2Fc",
		"/lead":     "%2Flead",
		"x%2Fy":     "x%252Fy",
		"sp ace?#":  "sp%20ace%3F%23",
		"..":        "%2E%2E",
		".":         "%2E",
		"ünï/cödé":  "%C3%BCn%C3%AF%2Fc%C3%B6d%C3%A9",
		`q"uote\`:   "q%22uote%5C",
		"a<b>&c":    "a%3Cb%3E%26c",
		"trailing/": "trailing%2F",
		"/":         "%2F",
		"//":        "%2F%2F",
	}
	for id, escaped := range ids {
		req, err := http.NewRequest("PUT", srv.URL+"/v1/files/"+escaped, strings.NewReader(`{"ok":true}`))
		require.NoError(t, err)
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusCreated, resp.StatusCode, "%s: %s", id, body)
		require.Equal(t, id, decodeEntity(t, body).ID)
		r, ok := a.row(t, "files", id)
		require.True(t, ok, id)
		require.EqualValues(t, 1, r.Version)
		require.Equal(t, "1", a.cache(t, "files", id)["v"], id)

		// Location leads back to the entity.
		resp, err = srv.Client().Get(srv.URL + resp.Header.Get("Location"))
		require.NoError(t, err)
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, id)
		require.Equal(t, "hit", resp.Header.Get("X-Cache"))
		require.Equal(t, string(body), string(got))
	}
	require.Equal(t, len(ids), a.count(t, `SELECT count(*) FROM entities`))

	// A raw slash is not part of an id.
	requireProblem(t, a.do(t, "PUT", "/v1/files/a/b", `{}`), http.StatusBadRequest, "%2F")
	requireProblem(t, a.do(t, "GET", "/v1/files/a/b", ``), http.StatusBadRequest, "%2F")
	require.Equal(t, len(ids), a.count(t, `SELECT count(*) FROM entities`))
}

func TestHTTPRoutes(t *testing.T) {
	t.Parallel()
	a := setupAPI(t, writer.HandlerConfig{})
	rec := a.do(t, "POST", "/v1/users/1", `{}`)
	requireProblem(t, rec, http.StatusMethodNotAllowed, "POST")
	require.Contains(t, rec.Header().Get("Allow"), "PUT")
	requireProblem(t, a.do(t, "GET", "/v1/_batch", ""), http.StatusMethodNotAllowed, "GET")
	requireProblem(t, a.do(t, "GET", "/v1/users", ""), http.StatusNotFound, "")
	requireProblem(t, a.do(t, "GET", "/nope", ""), http.StatusNotFound, "")

	rec = a.do(t, "GET", "/healthz", "")
	require.Equal(t, http.StatusOK, rec.Code)
	for _, path := range []string{"/healthz", "/readyz"} {
		rec = a.do(t, "POST", path, "")
		requireProblem(t, rec, http.StatusMethodNotAllowed, "POST")
		require.Equal(t, "GET, HEAD", rec.Header().Get("Allow"))
	}
	// A +json type is JSON.
	rec = a.do(t, "PUT", "/v1/users/vnd", `{}`, "Content-Type", "application/vnd.example+json; charset=utf-8")
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
}

func TestHTTPReadyz(t *testing.T) {
	t.Parallel()
	a := setupAPI(t, writer.HandlerConfig{ReadyChecks: map[string]func(context.Context) error{
		"nats": func(context.Context) error { return nil },
	}})
	rec := a.do(t, "GET", "/readyz", "")
	require.Equal(t, http.StatusOK, rec.Code)
	require.JSONEq(t, `{"status":"ok","postgres":"ok","redis":"ok","nats":"ok"}`, rec.Body.String())

	// NATS down: degraded, still ready.
	h := writer.NewHandler(a.w, writer.HandlerConfig{ReadyChecks: map[string]func(context.Context) error{
		"nats": func(context.Context) error { return io.ErrClosedPipe },
	}})
	rec = serve(t, h, "GET", "/readyz", "")
	require.Equal(t, http.StatusOK, rec.Code)
	require.JSONEq(t, `{"status":"degraded","postgres":"ok","redis":"ok","nats":"down"}`, rec.Body.String())

	// Redis down: degraded, still ready.
	w, err := writer.New(writer.Config{Pool: a.env.Pool, Fence: unreachableRedis(t, a.env.Prefix)})
	require.NoError(t, err)
	t.Cleanup(w.Close)
	rec = serve(t, writer.NewHandler(w, writer.HandlerConfig{}), "GET", "/readyz", "")
	require.Equal(t, http.StatusOK, rec.Code)
	require.JSONEq(t, `{"status":"degraded","postgres":"ok","redis":"down"}`, rec.Body.String())
}

func TestHTTPRedisUnreachable(t *testing.T) {
	t.Parallel()
	env := testenv.New(t)
	w, err := writer.New(writer.Config{Pool: env.Pool, Fence: unreachableRedis(t, env.Prefix)})
	require.NoError(t, err)
	t.Cleanup(w.Close)
	a := &apiBundle{bundle: &bundle{env: env, w: w}, h: writer.NewHandler(w, writer.HandlerConfig{})}

	rec := a.do(t, "PUT", "/v1/users/r", `{"a":1}`)
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	require.Equal(t, "pending", rec.Header().Get("X-Cache-Write"))
	require.Equal(t, 1, a.count(t, `SELECT count(*) FROM outbox WHERE cache_state = 'pending'`), "the outbox entry stays due for repair")

	rec = a.do(t, "GET", "/v1/users/r", "")
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "miss", rec.Header().Get("X-Cache"))
	require.EqualValues(t, 1, decodeEntity(t, rec.Body.Bytes()).Version)

	rec = a.do(t, "POST", "/v1/_batch", `{"ops":[{"op":"delete","collection":"users","id":"r"}]}`)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, "pending", rec.Header().Get("X-Cache-Write"))
	require.Contains(t, rec.Body.String(), `"cache_write":"pending"`)
}

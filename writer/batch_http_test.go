package writer_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/writer"
)

func TestHTTPBatch(t *testing.T) {
	t.Parallel()
	a := setupAPI(t, writer.HandlerConfig{})
	require.Equal(t, http.StatusCreated, a.do(t, "PUT", "/v1/users/old", `{"n":1}`).Code)

	rec := a.do(t, "POST", "/v1/_batch", `{"ops":[
		{"op":"put","collection":"users","id":"a/1","data":{"name":"Ada"}},
		{"op":"patch","collection":"users","id":"a/1","data":{"lang":"en"}},
		{"op":"put","collection":"orders","id":"o1","data":[1,2],"if_match":null},
		{"op":"delete","collection":"users","id":"old","if_match":1}
	]}`, "Content-Type", "application/json")
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, "ok", rec.Header().Get("X-Cache-Write"))
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	var out struct {
		Results    []json.RawMessage `json:"results"`
		CacheWrite string            `json:"cache_write"`
	}
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &out), rec.Body.String())
	require.Equal(t, "ok", out.CacheWrite)
	require.Len(t, out.Results, 4)
	e0, e1, e2 := decodeEntity(t, out.Results[0]), decodeEntity(t, out.Results[1]), decodeEntity(t, out.Results[2])
	require.Equal(t, "a/1", e0.ID)
	require.EqualValues(t, 1, e0.Version)
	require.EqualValues(t, 2, e1.Version, "the same key twice is two changes")
	require.JSONEq(t, `{"name":"Ada","lang":"en"}`, string(e1.Data))
	require.Equal(t, `[1, 2]`, string(e2.Data))
	require.JSONEq(t, `{"collection":"users","id":"old","version":2,"deleted":true}`, string(out.Results[3]))

	require.Equal(t, []string{"1:put", "2:put"}, a.outboxOps(t, "users", "a/1"))
	require.Equal(t, []string{"1:put", "2:delete"}, a.outboxOps(t, "users", "old"))
	require.Equal(t, "2", a.cache(t, "users", "a/1")["v"])
	require.Equal(t, string(e1.Data), a.cache(t, "users", "a/1")["d"])
	require.Equal(t, "1", a.cache(t, "orders", "o1")["v"])
	require.NotContains(t, a.cache(t, "users", "old"), "d")

	// The GET of a batch-written key matches the batch's result.
	rec = a.do(t, "GET", "/v1/users/a%2F1", "")
	require.Equal(t, string(out.Results[1]), rec.Body.String())
}

func TestHTTPBatchFailsAtomically(t *testing.T) {
	t.Parallel()
	a := setupAPI(t, writer.HandlerConfig{})
	require.Equal(t, http.StatusCreated, a.do(t, "PUT", "/v1/users/x", `{"n":1}`).Code)
	entries := a.outboxCount(t)
	cacheBefore := a.cache(t, "users", "x")

	ops := func(last string) string {
		return `{"ops":[{"op":"put","collection":"users","id":"new","data":{}},{"op":"put","collection":"users","id":"x","data":{"n":2}},` + last + `]}`
	}
	cases := []struct {
		name   string
		body   string
		status int
		detail string
	}{
		{"failed if_match", ops(`{"op":"put","collection":"users","id":"x","data":{},"if_match":1}`), 412, "ops[2]"},
		{"patch of an absent entity", ops(`{"op":"patch","collection":"users","id":"gone","data":{}}`), 404, "ops[2]"},
		{"delete of an absent entity", ops(`{"op":"delete","collection":"users","id":"gone"}`), 404, "ops[2]"},
		{"bad data for Postgres", ops(`{"op":"put","collection":"users","id":"z","data":"\u0000"}`), 400, "data"},
		{"bad collection", ops(`{"op":"put","collection":"Users","id":"z","data":{}}`), 400, "ops[2]"},
		{"bad id", ops(`{"op":"put","collection":"users","id":"","data":{}}`), 400, "ops[2]"},
		{"unknown op", ops(`{"op":"upsert","collection":"users","id":"z","data":{}}`), 400, "ops[2]"},
		{"put without data", ops(`{"op":"put","collection":"users","id":"z"}`), 400, "ops[2]"},
		{"delete with data", ops(`{"op":"delete","collection":"users","id":"x","data":{}}`), 400, "ops[2]"},
		{"zero if_match", ops(`{"op":"delete","collection":"users","id":"x","if_match":0}`), 400, "ops[2]"},
		{"unknown field", ops(`{"op":"delete","collection":"users","id":"x","if_none_match":1}`), 400, "if_none_match"},
		{"not JSON", `{"ops":[`, 400, "JSON"},
		{"no ops", `{}`, 400, "ops"},
		{"empty ops", `{"ops":[]}`, 400, "empty"},
		{"ops not a list", `{"ops":{}}`, 400, "ops"},
		{"trailing data", `{"ops":[{"op":"delete","collection":"users","id":"x"}]} []`, 400, "after"},
		{"too many ops", tooManyOps(writer.MaxBatchOps + 1), 400, "at most 1000"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			requireProblem(t, a.do(t, "POST", "/v1/_batch", c.body), c.status, c.detail)
		})
	}
	_, ok := a.row(t, "users", "new")
	require.False(t, ok, "nothing committed")
	r, _ := a.row(t, "users", "x")
	require.EqualValues(t, 1, r.Version)
	require.Equal(t, entries, a.outboxCount(t))
	require.Equal(t, cacheBefore, a.cache(t, "users", "x"))
	require.Len(t, a.cacheKeys(t), 1)

	// A full batch of 1000 ops is fine.
	rec := a.do(t, "POST", "/v1/_batch", tooManyOps(writer.MaxBatchOps))
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, entries+writer.MaxBatchOps, a.outboxCount(t))
}

func tooManyOps(n int) string {
	var b strings.Builder
	b.WriteString(`{"ops":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"op":"put","collection":"bulk","id":"k%d","data":%d}`, i, i)
	}
	b.WriteString(`]}`)
	return b.String()
}

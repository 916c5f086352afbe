package writer_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/writethrough/writethrough/internal/fence"
	"github.com/writethrough/writethrough/internal/pg"
	"github.com/writethrough/writethrough/internal/testenv"
	"github.com/writethrough/writethrough/migrations"
	"github.com/writethrough/writethrough/writer"
)

// ExampleNewHandler serves the HTTP API over a Writer: a PUT commits the row
// and its outbox entry, writes Redis through the fence, and the next GET is
// a cache hit.
func ExampleNewHandler() {
	ctx := context.Background()
	// A schema and key prefix of its own on the shared test services.
	schema, prefix := testenv.Name("wt_example_"), testenv.Name("wtexample")+":"
	if err := migrations.Up(ctx, testenv.DatabaseURL(), schema); err != nil {
		fmt.Println("migrate:", err)
		return
	}
	pool, err := pg.Open(ctx, pg.Config{URL: testenv.DatabaseURL(), Schema: schema})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer func() {
		_, _ = pool.Exec(ctx, "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
		pool.Close()
	}()
	opt, err := redis.ParseURL(testenv.RedisURL())
	if err != nil {
		fmt.Println(err)
		return
	}
	opt.ContextTimeoutEnabled = true // the writer bounds cache calls by deadlines
	rdb := redis.NewClient(opt)
	defer func() {
		testenv.DeletePrefix(rdb, prefix)
		rdb.Close()
	}()
	f, err := fence.New(rdb, fence.Config{Prefix: prefix})
	if err != nil {
		fmt.Println(err)
		return
	}

	w, err := writer.New(writer.Config{Pool: pool, Fence: f})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer w.Close()
	srv := httptest.NewServer(writer.NewHandler(w, writer.HandlerConfig{}))
	defer srv.Close()

	send := func(method, path, body string) {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			fmt.Println(err)
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		fmt.Print(method, " ", resp.Status)
		for _, h := range []string{"ETag", "X-Cache-Write", "X-Cache"} {
			if v := resp.Header.Get(h); v != "" {
				fmt.Printf(" %s: %s", h, v)
			}
		}
		fmt.Println()
		if i := strings.Index(string(b), `,"updated_at"`); i > 0 {
			fmt.Println(string(b[:i]) + "}")
		}
	}
	send("PUT", "/v1/users/42", `{"name":"Ada"}`)
	send("GET", "/v1/users/42", "")

	d, _ := rdb.HGet(ctx, prefix+"users:42", "d").Result()
	fmt.Println("redis d:", d)
	// Output:
	// PUT 201 Created ETag: "1" X-Cache-Write: ok
	// {"collection":"users","id":"42","version":1,"data":{"name": "Ada"}}
	// GET 200 OK ETag: "1" X-Cache: hit
	// {"collection":"users","id":"42","version":1,"data":{"name": "Ada"}}
	// redis d: {"name": "Ada"}
}

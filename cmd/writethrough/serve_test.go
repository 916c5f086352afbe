package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/internal/testenv"
)

func serveVars(env *testenv.Env) map[string]string {
	return map[string]string{
		"DATABASE_URL":           env.DatabaseURL,
		"WT_DB_SCHEMA":           env.Schema,
		"REDIS_URL":              env.RedisURL,
		"WT_REDIS_PREFIX":        env.Prefix,
		"NATS_URL":               env.NATSURL,
		"WT_NATS_STREAM":         env.Stream,
		"WT_NATS_SUBJECT_PREFIX": env.SubjectPrefix,
		"WT_HTTP_ADDR":           "127.0.0.1:0",
		"WT_LOG_LEVEL":           "info",
	}
}

// listeningAddr waits for the "listening" log line and returns its address.
func listeningAddr(t *testing.T, stderr *testenv.SyncBuffer, exited <-chan int) string {
	t.Helper()
	var addr string
	testenv.Eventually(t, 30*time.Second, func() bool {
		sc := bufio.NewScanner(strings.NewReader(stderr.String()))
		for sc.Scan() {
			var line struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "listening" {
				addr = line.Addr
				return true
			}
		}
		select {
		case code := <-exited:
			t.Fatalf("serve exited with %d before listening: %s", code, stderr.String())
		default:
		}
		return false
	}, "serve did not log a listening line: %s", testenv.Lazy(stderr.String))
	return addr
}

func TestServeGracefulShutdown(t *testing.T) {
	t.Parallel()
	env := testenv.New(t)
	vars := serveVars(env)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr testenv.SyncBuffer
	exited := make(chan int, 1)
	go func() {
		exited <- run(ctx, []string{"serve", "--shutdown-timeout=20s"}, func(k string) string { return vars[k] }, &stdout, &stderr)
	}()
	base := "http://" + listeningAddr(t, &stderr, exited)

	do := func(method, path, body string, hdr ...string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, strings.NewReader(body))
		require.NoError(t, err)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp, string(b)
	}

	resp, body := do("PUT", "/v1/users/a%2Fb", `{"name":"Ada"}`, "Content-Type", "application/json")
	require.Equal(t, http.StatusCreated, resp.StatusCode, body)
	require.Equal(t, "ok", resp.Header.Get("X-Cache-Write"))
	h, err := env.Redis.HGetAll(context.Background(), env.Prefix+"users:a/b").Result()
	require.NoError(t, err)
	require.Equal(t, map[string]string{"v": "1", "d": `{"name": "Ada"}`, "u": h["u"]}, h)

	resp, body = do("GET", "/readyz", "")
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	require.JSONEq(t, `{"status":"ok","postgres":"ok","redis":"ok","nats":"ok"}`, body)
	resp, body = do("GET", "/metrics", "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, body, "http_server_request_duration")
	resp, _ = do("GET", "/healthz", "")
	require.Equal(t, http.StatusOK, resp.StatusCode)

	// A request in flight at shutdown finishes: hold the row lock so the
	// PUT waits, cancel, check the listener is closed, then let it go.
	lock, err := env.Pool.Begin(context.Background())
	require.NoError(t, err)
	defer lock.Rollback(context.Background()) //nolint:errcheck
	_, err = lock.Exec(context.Background(), `SELECT 1 FROM entities WHERE collection = 'users' AND id = 'a/b' FOR UPDATE`)
	require.NoError(t, err)
	type result struct {
		status int
		body   string
	}
	inflight := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest("PUT", base+"/v1/users/a%2Fb", strings.NewReader(`{"name":"Grace"}`))
		req.Header.Set("Idempotency-Key", "in-flight")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			inflight <- result{status: -1, body: err.Error()}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		inflight <- result{resp.StatusCode, string(b)}
	}()
	testenv.Eventually(t, 10*time.Second, func() bool {
		var n int
		_ = env.Pool.QueryRow(context.Background(), `SELECT count(*) FROM idempotency WHERE key = 'in-flight'`).Scan(&n)
		return n == 1
	}, "the PUT is in flight")

	cancel()
	testenv.Eventually(t, 10*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", strings.TrimPrefix(base, "http://"), time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	}, "the listener closes")
	select {
	case code := <-exited:
		t.Fatalf("serve exited with %d while a request was in flight", code)
	default:
	}
	require.NoError(t, lock.Commit(context.Background()))
	res := <-inflight
	require.Equal(t, http.StatusOK, res.status, res.body)
	require.Contains(t, res.body, `"version":2`)

	select {
	case code := <-exited:
		require.Equal(t, exitOK, code, stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop")
	}
	require.Contains(t, stderr.String(), `"msg":"stopped"`)
}

func TestServeUnmigratedDatabase(t *testing.T) {
	t.Parallel()
	env := testenv.New(t)
	vars := serveVars(env)
	vars["WT_DB_SCHEMA"] = testenv.Name("wt_unmigrated_")
	var stdout, stderr testenv.SyncBuffer
	code := run(context.Background(), []string{"serve", "--relay=false"}, func(k string) string { return vars[k] }, &stdout, &stderr)
	require.Equal(t, exitFail, code, stderr.String())
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	require.Len(t, lines, 1, stderr.String())
	require.Contains(t, lines[0], "database schema is not migrated: run `writethrough migrate up`")
}

func TestServeBadConfiguration(t *testing.T) {
	t.Parallel()
	env := testenv.New(t)
	for _, c := range []struct {
		vars map[string]string
		args []string
		want string
	}{
		{map[string]string{"WT_HTTP_ADDR": "nonsense"}, nil, "WT_HTTP_ADDR"},
		{map[string]string{"WT_HTTP_ADDR": "127.0.0.1:99999"}, nil, "WT_HTTP_ADDR"},
		{map[string]string{"WT_MAX_BODY_BYTES": "-1"}, nil, "WT_MAX_BODY_BYTES"},
		{map[string]string{"DATABASE_URL": "postgres://postgres:hunter2@127.0.0.1:5432/test?sslmode=bogus"}, nil, "DATABASE_URL"},
		{map[string]string{"DATABASE_URL": "postgres://127.0.0.1:5432/test?pool_max_conns=many"}, nil, "DATABASE_URL"},
		{map[string]string{"REDIS_URL": "redis://:hunter2@127.0.0.1:6379/abc"}, nil, "REDIS_URL"},
		{map[string]string{"REDIS_URL": "redis://127.0.0.1:6379/0?foo=bar"}, nil, "REDIS_URL"},
		{map[string]string{"WT_NATS_STREAM": strings.Repeat("S", 256)}, nil, "WT_NATS_STREAM"},
		{map[string]string{"WT_EVENT_SOURCE": "not a uri"}, nil, "WT_EVENT_SOURCE"},
		{nil, []string{"--cache-timeout=-1s"}, "--cache-timeout"},
		{nil, []string{"--tombstone-ttl=0"}, "--tombstone-ttl"},
		{nil, []string{"--group-size=0"}, "--group-size"},
		{nil, []string{"--no-such-flag"}, "no-such-flag"},
	} {
		vars := serveVars(env)
		for k, v := range c.vars {
			vars[k] = v
		}
		var stdout, stderr testenv.SyncBuffer
		code := run(context.Background(), append([]string{"serve"}, c.args...), func(k string) string { return vars[k] }, &stdout, &stderr)
		require.Equal(t, exitUsage, code, stderr.String())
		require.Contains(t, stderr.String(), c.want)
		if c.args == nil { // a bad flag also prints the usage
			require.Equal(t, 1, strings.Count(strings.TrimSpace(stderr.String()), "\n")+1, "one line: %s", stderr.String())
		}
		require.NotContains(t, stderr.String(), "hunter2")
	}
}

// A stream the relay cannot use (another stream holds its subjects) leaves
// events unpublished: readyz says so.
func TestServeReadyzReportsUnusableStream(t *testing.T) {
	t.Parallel()
	env := testenv.New(t)
	nc, err := nats.Connect(env.NATSURL)
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	other := env.Stream + "_TAKEN"
	_, err = js.CreateStream(context.Background(), jetstream.StreamConfig{Name: other, Subjects: []string{env.SubjectPrefix + ".>"}, Storage: jetstream.MemoryStorage})
	require.NoError(t, err)
	defer js.DeleteStream(context.Background(), other) //nolint:errcheck

	vars := serveVars(env)
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr testenv.SyncBuffer
	exited := make(chan int, 1)
	go func() {
		exited <- run(ctx, []string{"serve"}, func(k string) string { return vars[k] }, &stdout, &stderr)
	}()
	defer func() { cancel(); <-exited }()
	resp, err := http.Get("http://" + listeningAddr(t, &stderr, exited) + "/readyz")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.JSONEq(t, `{"status":"degraded","postgres":"ok","redis":"ok","nats":"down"}`, string(body))
}

// A body limit above what NATS can carry is warned about at start.
func TestServeWarnsBodyLimitAboveNATSPayload(t *testing.T) {
	t.Parallel()
	env := testenv.New(t)
	vars := serveVars(env)
	vars["WT_MAX_BODY_BYTES"] = "67108864" // above any NATS server's max payload
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr testenv.SyncBuffer
	exited := make(chan int, 1)
	go func() {
		exited <- run(ctx, []string{"serve", "--relay=false"}, func(k string) string { return vars[k] }, &stdout, &stderr)
	}()
	listeningAddr(t, &stderr, exited)
	cancel()
	<-exited
	require.Contains(t, stderr.String(), `"msg":"WT_MAX_BODY_BYTES is above what one event can carry`)
}

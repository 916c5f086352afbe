package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/writethrough/writethrough/internal/pgbench"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

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
		Conns: 4, Warmup: 50 * time.Millisecond, Duration: 300 * time.Millisecond, Target: srv.URL,
		Request: func(w, n int) request { return request{Method: http.MethodGet, Path: "/ok"} },
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
		Conns: 2, Duration: 100 * time.Millisecond, Target: srv.URL,
		Request: func(w, n int) request { return request{Method: http.MethodGet, Path: "/bad"} },
		Check:   wantStatus(200),
	}.run(context.Background())
	require.NoError(t, err)
	require.Equal(t, res.Requests, res.Failed)
	require.ErrorContains(t, res.FirstErr, "status 418")
}

func TestLoadRefusesOtherHosts(t *testing.T) {
	t.Parallel()
	_, err := load{
		Conns: 1, Duration: 10 * time.Millisecond, Target: "http://example.com/",
		Request: func(w, n int) request { return request{Method: http.MethodGet, Path: "/"} },
	}.run(context.Background())
	require.ErrorIs(t, err, errNotLoopback)
}

// countConns counts the connections srv accepts. Call it before Start.
func countConns(srv *httptest.Server) *atomic.Int64 {
	var n atomic.Int64
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			n.Add(1)
		}
	}
	return &n
}

func TestLoadSendsHTTP11Requests(t *testing.T) {
	t.Parallel()
	type seen struct {
		method, path, proto, host, contentType, userAgent string
		contentLength                                     int64
		transferEncoding                                  []string
		body                                              string
	}
	var mu sync.Mutex
	var got []seen
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		got = append(got, seen{r.Method, r.URL.RequestURI(), r.Proto, r.Host, r.Header.Get("Content-Type"),
			r.Header.Get("User-Agent"), r.ContentLength, r.TransferEncoding, string(b)})
		mu.Unlock()
		w.WriteHeader(http.StatusCreated)
	}))
	conns := countConns(srv)
	srv.Start()
	defer srv.Close()

	const doc = `{"name":"Ada"}`
	res, err := load{
		Conns: 1, Duration: 100 * time.Millisecond, Target: srv.URL,
		Request: func(w, n int) request { return newPut("/v1/bench/7?x=1", doc) },
		Check:   wantStatus(201),
	}.run(context.Background())
	require.NoError(t, err)
	require.Zero(t, res.Failed, "first error: %v", res.FirstErr)
	require.Positive(t, res.Requests)

	mu.Lock()
	defer mu.Unlock()
	// The server may have seen one request more per worker: the last,
	// answered after the window.
	require.GreaterOrEqual(t, len(got), res.Requests)
	want := seen{http.MethodPut, "/v1/bench/7?x=1", "HTTP/1.1", srv.Listener.Addr().String(), "application/json",
		"writethrough-bench", int64(len(doc)), nil, doc}
	for _, g := range got {
		require.Equal(t, want, g)
	}
	// Keep-alive: every request went over the worker's one connection.
	require.EqualValues(t, 1, conns.Load())
}

func TestRequestBytes(t *testing.T) {
	t.Parallel()
	b := newPut("/v1/bench/7", `{"a":1}`).appendTo(nil, "127.0.0.1:9")
	require.Equal(t, "PUT /v1/bench/7 HTTP/1.1\r\nHost: 127.0.0.1:9\r\nUser-Agent: writethrough-bench\r\n"+
		"Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}", string(b))
	b = request{Method: http.MethodGet, Path: "/"}.appendTo(b[:0], "localhost:80")
	require.Equal(t, "GET / HTTP/1.1\r\nHost: localhost:80\r\nUser-Agent: writethrough-bench\r\n\r\n", string(b))
	b = request{Method: http.MethodPut, Path: "/x"}.appendTo(b[:0], "h")
	require.Contains(t, string(b), "\r\nContent-Length: 0\r\n\r\n")

	// What cannot be written is refused before it is sent.
	for _, r := range []request{
		{Method: "", Path: "/"},
		{Method: "G T", Path: "/"},
		{Method: "GET", Path: "x"},
		{Method: "GET", Path: "/a b"},
		{Method: "GET", Path: "/a\r\nX-Evil: 1"},
		{Method: "PUT", Path: "/", ContentType: "a\r\nb"},
	} {
		require.Error(t, r.valid(), "%+v", r)
	}
	require.NoError(t, newPut("/v1/bench/7", "{}").valid())
}

func TestLoadReadsChunkedResponses(t *testing.T) {
	t.Parallel()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Cache", "hit")
		w.Header().Set("Trailer", "X-Sum")
		for _, part := range []string{`{"a":`, "1", strings.Repeat(" ", 5000), "}"} {
			_, _ = io.WriteString(w, part)
			w.(http.Flusher).Flush()
		}
		w.Header().Set("X-Sum", "42")
	}))
	conns := countConns(srv)
	srv.Start()
	defer srv.Close()

	// The server does answer in chunks.
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get(srv.URL)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	require.Equal(t, []string{"chunked"}, resp.TransferEncoding)
	conns.Store(0)

	res, err := load{
		Conns: 1, Duration: 100 * time.Millisecond, Target: srv.URL,
		Request: func(w, n int) request { return request{Method: http.MethodGet, Path: "/"} },
		Check: func(status int, h *header) error {
			if status != 200 || h.Get("x-cache") != "hit" {
				return fmt.Errorf("status %d, X-Cache %q", status, h.Get("X-Cache"))
			}
			return nil
		},
	}.run(context.Background())
	require.NoError(t, err)
	require.Zero(t, res.Failed, "first error: %v", res.FirstErr)
	require.Greater(t, res.Requests, 1)
	// Each body and its trailer was read to its end: the connection carried
	// the next request.
	require.EqualValues(t, 1, conns.Load())
}

func TestLoadRedialsAfterConnectionClose(t *testing.T) {
	t.Parallel()
	var served atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		w.Header().Set("Connection", "close")
		_, _ = io.WriteString(w, "bye")
	}))
	conns := countConns(srv)
	srv.Start()
	defer srv.Close()

	res, err := load{
		Conns: 2, Warmup: 20 * time.Millisecond, Duration: 100 * time.Millisecond, Target: srv.URL,
		Request: func(w, n int) request { return request{Method: http.MethodGet, Path: "/"} },
		Check:   wantStatus(200),
	}.run(context.Background())
	require.NoError(t, err)
	require.Zero(t, res.Failed, "first error: %v", res.FirstErr)
	require.Greater(t, res.Requests, 2)
	// One connection per request.
	require.Equal(t, served.Load(), conns.Load())
}

// scripted serves every request on a connection with the same raw bytes,
// and closes the connection after them if hangUp is set.
func scripted(t *testing.T, response string, hangUp bool) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		for {
			if _, err := rw.WriteString(response); err != nil || rw.Flush() != nil || hangUp {
				return
			}
			// The next request on the connection; it ends when the client
			// hangs up.
			req, err := http.ReadRequest(rw.Reader)
			if err != nil {
				return
			}
			if _, err := io.Copy(io.Discard, req.Body); err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestLoadFailsOnGarbage(t *testing.T) {
	t.Parallel()
	// The server answers nonsense and keeps the connection open.
	srv := scripted(t, "SSH-2.0-OpenSSH_9.2\r\n", false)
	start := time.Now()
	res, err := load{
		Conns: 1, Duration: 100 * time.Millisecond, Target: srv.URL,
		Request: func(w, n int) request { return request{Method: http.MethodGet, Path: "/"} },
	}.run(context.Background())
	require.NoError(t, err)
	require.Less(t, time.Since(start), 2*time.Second)
	require.Positive(t, res.Requests)
	require.Equal(t, res.Requests, res.Failed)
	require.ErrorIs(t, res.FirstErr, errMalformed)
	require.EqualError(t, res.FirstErr, `load: malformed response: status line "SSH-2.0-OpenSSH_9.2"`)
}

func TestClientParsesResponses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		response string
		hangUp   bool
		status   int
		xcache   string
		redials  bool   // the client hangs up after the response
		err      string // a failed request
	}{
		{name: "length", response: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nx-cache:  hit \r\n\r\nhello",
			status: 200, xcache: "hit"},
		{name: "bare LF", response: "HTTP/1.1 201 Created\nContent-Length: 2\nX-Cache: miss\n\nok", status: 201, xcache: "miss"},
		{name: "no reason", response: "HTTP/1.1 204\r\n\r\n", status: 204},
		{name: "interim", response: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", status: 200},
		{name: "chunks", status: 200, xcache: "hit",
			response: "HTTP/1.1 200 OK\r\nX-Cache: hit\r\nTransfer-Encoding: Chunked\r\n\r\n" +
				"5;name=value\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n"},
		{name: "HTTP/1.0", response: "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", hangUp: true, status: 200, redials: true},
		{name: "HTTP/1.0 keep-alive", response: "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok", status: 200},
		{name: "until close", response: "HTTP/1.1 200 OK\r\n\r\nthe body ends with the connection", hangUp: true,
			status: 200, redials: true},
		{name: "close", response: "HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n",
			hangUp: true, status: 200, redials: true},
		{name: "bad status", response: "HTTP/1.1 2x0 OK\r\n\r\n", err: `load: malformed response: status line "HTTP/1.1 2x0 OK"`},
		{name: "HTTP/2", response: "HTTP/2 200\r\n\r\n", err: `load: malformed response: status line "HTTP/2 200"`},
		{name: "bad length", response: "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
			err: `load: malformed response: Content-Length "-1"`},
		{name: "two lengths", response: "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
			err: `load: malformed response: Content-Length "2"`},
		{name: "no colon", response: "HTTP/1.1 200 OK\r\nX-Cache hit\r\n\r\n",
			err: `load: malformed response: header line "X-Cache hit"`},
		{name: "folded", response: "HTTP/1.1 200 OK\r\nX-A: 1\r\n  2\r\n\r\n",
			err: `load: malformed response: header line "  2"`},
		{name: "coding", response: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
			err: `load: malformed response: unsupported Transfer-Encoding "gzip"`},
		{name: "bad chunk size", response: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
			err: `load: malformed response: chunk size line "zz"`},
		{name: "long chunk", response: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\n",
			err: `load: malformed response: chunk longer than its size 1`},
		{name: "101", response: "HTTP/1.1 101 Switching Protocols\r\n\r\n",
			err: `load: malformed response: unasked-for 101 Switching Protocols`},
		{name: "short body", response: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", hangUp: true,
			err: "load: read response body: unexpected EOF"},
		{name: "cut header", response: "HTTP/1.1 200 OK\r\nContent-Le", hangUp: true,
			err: "load: read response header: unexpected EOF"},
		{name: "nothing", response: "", hangUp: true, err: "load: read response: unexpected EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := scripted(t, tc.response, tc.hangUp)
			tg, err := parseTarget(srv.URL)
			require.NoError(t, err)
			c := newClient(context.Background(), tg)
			defer c.close()
			for range 2 {
				status, err := c.do(request{Method: http.MethodGet, Path: "/"})
				if tc.err != "" {
					require.EqualError(t, err, tc.err)
					require.Nil(t, c.conn, "the client hangs up after a failure")
					continue
				}
				require.NoError(t, err)
				require.Equal(t, tc.status, status)
				require.Equal(t, tc.xcache, c.hdr.Get("X-Cache"))
				require.Equal(t, tc.redials, c.conn == nil)
			}
		})
	}
}

// FuzzReadResponse feeds the response parser arbitrary bytes: it must
// neither panic nor accept a status outside 100-999.
func FuzzReadResponse(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Cache: hit\r\n\r\nhello"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x\r\nhello\r\n0\r\nT: 1\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 204\r\nConnection: close\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\n\r\nuntil the end"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c := newClient(context.Background(), target{})
		c.r.Reset(bytes.NewReader(data))
		status, _, err := c.read(false)
		if err == nil && (status < 100 || status > 999) {
			t.Fatalf("status %d accepted", status)
		}
	})
}

func TestRatios(t *testing.T) {
	t.Parallel()
	r := report{
		put8: loadResult{RPS: 900}, pg8: pgbench.Result{TPS: 1000},
		put1: loadResult{P50: 3 * time.Millisecond}, pg1: pgbench.Result{Latency: 2 * time.Millisecond},
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

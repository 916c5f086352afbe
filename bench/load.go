package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// load is a closed-loop HTTP load: Conns workers, each with its own
// keep-alive connection, send one request after another. Requests that
// complete during the measuring window, after the warm-up, are counted.
//
// It speaks HTTP/1.1 itself (see client) rather than through net/http's
// client: the load shares the machine's cores with the server it
// measures, and net/http's client, with two goroutines per connection and
// a header map per response, spends about twice the CPU per request.
type load struct {
	// Conns is the number of concurrent workers and connections.
	Conns int
	// Warmup runs before measuring; Duration is the measuring window.
	Warmup, Duration time.Duration
	// Target is the server's base URL, such as "http://127.0.0.1:8080". It
	// must be on the loopback interface.
	Target string
	// Request builds the n-th request of a worker.
	Request func(worker, n int) request
	// Check inspects a response; an error counts the request as failed.
	// Nil accepts every response.
	Check func(status int, h *header) error
}

// request is one request of a load.
type request struct {
	Method string
	// Path is the absolute path, and query if any: "/v1/bench/42".
	Path        string
	Body        string
	ContentType string
}

// loadResult is what a load measured.
type loadResult struct {
	Requests int // completed in the window, failed ones included
	Failed   int
	FirstErr error
	Elapsed  time.Duration
	RPS      float64
	P50, P90 time.Duration
	P99      time.Duration
}

func (r loadResult) String() string {
	return fmt.Sprintf("%.0f req/s, p50 %s, p90 %s, p99 %s, %d requests, %d failed",
		r.RPS, ms(r.P50), ms(r.P90), ms(r.P99), r.Requests, r.Failed)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond)) }

var (
	errNotLoopback = errors.New("load: target is not on the loopback interface")
	// errMalformed is wrapped by the error of a request whose response
	// does not parse as HTTP/1.x.
	errMalformed = errors.New("load: malformed response")
)

const (
	dialTimeout = 5 * time.Second
	// requestTimeout bounds one request, from its write to the end of its
	// response.
	requestTimeout = 30 * time.Second
)

func loopback(u *url.URL) bool {
	host := u.Hostname()
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (l load) run(ctx context.Context) (loadResult, error) {
	if l.Conns < 1 || l.Duration <= 0 {
		return loadResult{}, errors.New("load: Conns and Duration must be positive")
	}
	target, err := parseTarget(l.Target)
	if err != nil {
		return loadResult{}, err
	}

	start := time.Now()
	from := start.Add(l.Warmup)
	until := from.Add(l.Duration)
	ctx, cancel := context.WithDeadline(ctx, until.Add(30*time.Second))
	defer cancel()

	type tally struct {
		lat      []time.Duration
		failed   int
		firstErr error
		err      error
	}
	tallies := make([]tally, l.Conns)
	var wg sync.WaitGroup
	for w := range l.Conns {
		wg.Go(func() {
			t := &tallies[w]
			t.lat = make([]time.Duration, 0, 1<<14)
			c := newClient(ctx, target)
			defer c.close()
			for n := 0; ; n++ {
				if ctx.Err() != nil {
					t.err = ctx.Err()
					return
				}
				req := l.Request(w, n)
				if err := req.valid(); err != nil {
					t.err = err
					return
				}
				t0 := time.Now()
				if !t0.Before(until) {
					return
				}
				status, err := c.do(req)
				if err == nil && l.Check != nil {
					err = l.Check(status, &c.hdr)
				}
				t1 := time.Now()
				if t1.Before(from) || t1.After(until) {
					continue
				}
				t.lat = append(t.lat, t1.Sub(t0))
				if err != nil {
					t.failed++
					if t.firstErr == nil {
						t.firstErr = err
					}
				}
			}
		})
	}
	wg.Wait()

	var res loadResult
	var all []time.Duration
	for _, t := range tallies {
		if t.err != nil {
			return loadResult{}, t.err
		}
		all = append(all, t.lat...)
		res.Failed += t.failed
		if res.FirstErr == nil {
			res.FirstErr = t.firstErr
		}
	}
	res.Requests = len(all)
	res.Elapsed = l.Duration
	res.RPS = float64(res.Requests) / l.Duration.Seconds()
	slices.Sort(all)
	res.P50, res.P90, res.P99 = quantile(all, 0.50), quantile(all, 0.90), quantile(all, 0.99)
	return res, nil
}

// quantile of sorted durations (nearest rank).
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// wantStatus returns a Check that accepts only the given status codes.
func wantStatus(codes ...int) func(int, *header) error {
	return func(status int, _ *header) error {
		if slices.Contains(codes, status) {
			return nil
		}
		return fmt.Errorf("status %d", status)
	}
}

// target is where a load's connections go.
type target struct {
	addr string // host:port to dial
	host string // the Host header
}

func parseTarget(s string) (target, error) {
	u, err := url.Parse(s)
	if err != nil {
		return target{}, fmt.Errorf("load: target: %w", err)
	}
	if !loopback(u) {
		return target{}, errNotLoopback
	}
	if u.Scheme != "http" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return target{}, fmt.Errorf("load: target %q is not a base URL http://host:port", s)
	}
	port := u.Port()
	if port == "" {
		port = "80"
	}
	return target{addr: net.JoinHostPort(u.Hostname(), port), host: u.Host}, nil
}

// valid says why r cannot be written as a request, if it cannot.
func (r request) valid() error {
	if r.Method == "" || !allBytes(r.Method, isTokenByte) {
		return fmt.Errorf("load: request method %q is not a token", r.Method)
	}
	if r.Path == "" || r.Path[0] != '/' || !allBytes(r.Path, isVisible) {
		return fmt.Errorf("load: request path %q is not an absolute path", r.Path)
	}
	if !allBytes(r.ContentType, func(b byte) bool { return b == ' ' || isVisible(b) }) {
		return fmt.Errorf("load: request content type %q", r.ContentType)
	}
	return nil
}

// appendTo encodes r as an HTTP/1.1 request to host. Besides the
// framing it sends a User-Agent, as net/http's client did, so that the
// server parses as many header fields as before.
func (r request) appendTo(b []byte, host string) []byte {
	b = append(b, r.Method...)
	b = append(b, ' ')
	b = append(b, r.Path...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, host...)
	b = append(b, "\r\nUser-Agent: writethrough-bench\r\n"...)
	if r.ContentType != "" {
		b = append(b, "Content-Type: "...)
		b = append(b, r.ContentType...)
		b = append(b, "\r\n"...)
	}
	// Like net/http: a length with a body, and a zero one for the methods
	// that expect a body.
	if r.Body != "" || r.Method == "POST" || r.Method == "PUT" || r.Method == "PATCH" {
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, int64(len(r.Body)), 10)
		b = append(b, "\r\n"...)
	}
	b = append(b, "\r\n"...)
	return append(b, r.Body...)
}

// header holds the header fields of the last response a client read,
// until its next request.
type header struct {
	buf    []byte
	fields []field
}

// field is one header field: its name is buf[start:mid], its value
// buf[mid:end].
type field struct{ start, mid, end int }

// maxFields bounds the header fields of a response.
const maxFields = 100

// Get returns the value of the first field named name, in any case, or "".
func (h *header) Get(name string) string {
	for _, f := range h.fields {
		if equalFold(h.buf[f.start:f.mid], name) {
			return string(h.buf[f.mid:f.end])
		}
	}
	return ""
}

func (h *header) reset() {
	h.buf, h.fields = h.buf[:0], h.fields[:0]
}

func (h *header) add(name, value []byte) {
	start := len(h.buf)
	h.buf = append(h.buf, name...)
	mid := len(h.buf)
	h.buf = append(h.buf, value...)
	h.fields = append(h.fields, field{start, mid, len(h.buf)})
}

// client is one worker's HTTP/1.1 keep-alive connection. A request is
// written from a reused buffer in one write; its response is read just far
// enough to know its status, its header fields and where its body ends.
// After a failure, or a response that closes the connection, the next
// request dials again.
type client struct {
	ctx    context.Context
	target target
	conn   net.Conn
	stop   func() bool // unregisters the close of conn at the end of ctx
	r      *bufio.Reader
	out    []byte
	hdr    header
}

func newClient(ctx context.Context, t target) *client {
	return &client{
		ctx:    ctx,
		target: t,
		r:      bufio.NewReaderSize(nil, 16<<10),
		out:    make([]byte, 0, 1024),
		hdr:    header{buf: make([]byte, 0, 512), fields: make([]field, 0, 16)},
	}
}

func (c *client) dial() error {
	d := net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	conn, err := d.DialContext(c.ctx, "tcp", c.target.addr)
	if err != nil {
		return err
	}
	c.conn = conn
	// A request in flight when ctx ends fails at once.
	c.stop = context.AfterFunc(c.ctx, func() { conn.Close() })
	c.r.Reset(conn)
	return nil
}

func (c *client) close() {
	if c.conn == nil {
		return
	}
	c.stop()
	c.conn.Close()
	c.conn = nil
}

// do sends req and reads its response, whose header fields are left in
// c.hdr. It returns the response's status.
func (c *client) do(req request) (int, error) {
	c.hdr.reset()
	if c.conn == nil {
		if err := c.dial(); err != nil {
			return 0, err
		}
	}
	c.out = req.appendTo(c.out[:0], c.target.host)
	if err := c.conn.SetDeadline(time.Now().Add(requestTimeout)); err != nil {
		c.close()
		return 0, err
	}
	if _, err := c.conn.Write(c.out); err != nil {
		c.close()
		return 0, err
	}
	status, keep, err := c.read(req.Method == "HEAD")
	if err != nil || !keep {
		c.close()
	}
	return status, err
}

// read reads one response, skipping interim 1xx ones, and says whether
// the connection can carry the next request.
func (c *client) read(head bool) (int, bool, error) {
	for {
		line, err := c.line()
		if err != nil {
			return 0, false, fmt.Errorf("load: read response: %w", err)
		}
		status, http11, ok := parseStatusLine(line)
		if !ok {
			return 0, false, malformed("status line %q", clip(line))
		}
		c.hdr.reset()
		f, err := c.readHeader()
		if err != nil {
			return 0, false, err
		}
		switch {
		case status == 101:
			return 0, false, malformed("unasked-for 101 Switching Protocols")
		case status < 200:
			continue // an interim response; the final one follows
		}
		keep := !f.close && (http11 || f.keepAlive)
		switch {
		case head || status == 204 || status == 304:
		case f.chunked:
			err = c.discardChunked()
		case f.length >= 0:
			if _, err = c.r.Discard(int(f.length)); err != nil {
				err = fmt.Errorf("load: read response body: %w", unexpected(err))
			}
		default:
			// Neither length nor chunks: the body ends with the connection.
			_, err = io.Copy(io.Discard, c.r)
			keep = false
		}
		if err != nil {
			return 0, false, err
		}
		return status, keep, nil
	}
}

// framing is what a response's header fields say of its body and
// connection.
type framing struct {
	length    int64 // -1 if not given
	chunked   bool
	close     bool // Connection: close
	keepAlive bool // Connection: keep-alive, for HTTP/1.0
}

func (c *client) readHeader() (framing, error) {
	f := framing{length: -1}
	for {
		line, err := c.line()
		if err != nil {
			return f, fmt.Errorf("load: read response header: %w", err)
		}
		if len(line) == 0 {
			return f, nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !allBytes(line[:colon], isTokenByte) {
			return f, malformed("header line %q", clip(line))
		}
		name, value := line[:colon], bytes.Trim(line[colon+1:], " \t")
		switch {
		case equalFold(name, "Content-Length"):
			n, ok := parseLength(value)
			if !ok || (f.length >= 0 && n != f.length) {
				return f, malformed("Content-Length %q", clip(value))
			}
			f.length = n
		case equalFold(name, "Transfer-Encoding"):
			if !equalFold(value, "chunked") {
				return f, malformed("unsupported Transfer-Encoding %q", clip(value))
			}
			f.chunked = true
		case equalFold(name, "Connection"):
			f.close = f.close || hasToken(value, "close")
			f.keepAlive = f.keepAlive || hasToken(value, "keep-alive")
		}
		if len(c.hdr.fields) == maxFields {
			return f, malformed("more than %d header fields", maxFields)
		}
		c.hdr.add(name, value)
	}
}

// discardChunked reads a chunked body and its trailer fields.
func (c *client) discardChunked() error {
	for {
		line, err := c.line()
		if err != nil {
			return fmt.Errorf("load: read response body: %w", err)
		}
		size := line
		if i := bytes.IndexByte(size, ';'); i >= 0 {
			size = size[:i] // chunk extensions
		}
		n, ok := parseHex(bytes.Trim(size, " \t"))
		if !ok {
			return malformed("chunk size line %q", clip(line))
		}
		if n == 0 {
			break
		}
		if _, err := c.r.Discard(n); err != nil {
			return fmt.Errorf("load: read response body: %w", unexpected(err))
		}
		if line, err = c.line(); err != nil {
			return fmt.Errorf("load: read response body: %w", err)
		}
		if len(line) != 0 {
			return malformed("chunk longer than its size %d", n)
		}
	}
	for {
		line, err := c.line()
		if err != nil {
			return fmt.Errorf("load: read response trailer: %w", err)
		}
		if len(line) == 0 {
			return nil
		}
	}
}

// line reads one line, without its CRLF (or bare LF). It is valid until
// the next read.
func (c *client) line() ([]byte, error) {
	line, err := c.r.ReadSlice('\n')
	switch {
	case errors.Is(err, bufio.ErrBufferFull):
		return nil, malformed("line longer than %d bytes", c.r.Size())
	case err != nil:
		return nil, unexpected(err)
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// parseStatusLine parses "HTTP/1.1 200 OK".
func parseStatusLine(line []byte) (status int, http11, ok bool) {
	if len(line) < 12 || string(line[:7]) != "HTTP/1." || line[8] != ' ' || (len(line) > 12 && line[12] != ' ') {
		return 0, false, false
	}
	switch line[7] {
	case '0':
	case '1':
		http11 = true
	default:
		return 0, false, false
	}
	for _, b := range line[9:12] {
		if b < '0' || b > '9' {
			return 0, false, false
		}
		status = status*10 + int(b-'0')
	}
	return status, http11, status >= 100
}

func parseLength(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, d := range b {
		if d < '0' || d > '9' {
			return 0, false
		}
		n = n*10 + int64(d-'0')
	}
	return n, true
}

func parseHex(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 15 {
		return 0, false
	}
	n := 0
	for _, d := range b {
		switch {
		case '0' <= d && d <= '9':
			n = n<<4 | int(d-'0')
		case 'a' <= d && d <= 'f':
			n = n<<4 | int(d-'a'+10)
		case 'A' <= d && d <= 'F':
			n = n<<4 | int(d-'A'+10)
		default:
			return 0, false
		}
	}
	return n, true
}

// hasToken reports whether the comma-separated list v holds token, in any
// case.
func hasToken(v []byte, token string) bool {
	for len(v) > 0 {
		item := v
		if i := bytes.IndexByte(v, ','); i >= 0 {
			item, v = v[:i], v[i+1:]
		} else {
			v = nil
		}
		if equalFold(bytes.Trim(item, " \t"), token) {
			return true
		}
	}
	return false
}

// equalFold is ASCII case-insensitive equality, as header names need.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

func allBytes[S string | []byte](s S, ok func(byte) bool) bool {
	for i := range len(s) {
		if !ok(s[i]) {
			return false
		}
	}
	return true
}

// isTokenByte reports whether b may appear in a method or a header name.
func isTokenByte(b byte) bool {
	switch {
	case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0
}

func isVisible(b byte) bool { return b > ' ' && b < 0x7f }

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errMalformed, fmt.Sprintf(format, args...))
}

// unexpected turns the end of the connection in the middle of a response
// into io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// clip shortens what a malformed response quotes in its error.
func clip(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

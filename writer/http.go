package writer

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"
)

// HandlerConfig configures the HTTP API. The zero value of each field means
// its default.
type HandlerConfig struct {
	// MaxBodyBytes limits a request body (WT_MAX_BODY_BYTES); a larger body
	// is answered 413. Default 524288 (512 KiB).
	MaxBodyBytes int64
	// Logger receives one line per request that failed on the server's side;
	// default the Writer's logger.
	Logger *slog.Logger
	// ReadyChecks are dependencies besides Postgres and Redis (which the
	// Handler checks through the Writer) that /readyz reports by name, e.g.
	// "nats". A failing check makes the service degraded, never unready.
	ReadyChecks map[string]func(context.Context) error
	// ReadyTimeout bounds each /readyz check. Default 2s.
	ReadyTimeout time.Duration
	// IdempotencyTTL is how long a completed answer is replayed for its
	// Idempotency-Key. Default 24h.
	IdempotencyTTL time.Duration
	// IdempotencyLease is how long a request still in flight holds its key
	// (duplicates get 409) before the key counts as abandoned and a retry may
	// take it over. Safety does not depend on it: an answer is stored in the
	// same transaction as its write, and only by the key's current holder.
	// Default 1m.
	IdempotencyLease time.Duration
	// MeterProvider for the request metrics; default the global one.
	MeterProvider metric.MeterProvider
}

// DefaultMaxBodyBytes is the default request body limit.
const DefaultMaxBodyBytes = 512 << 10

// Handler serves the HTTP API of CONTRACT §3 over a Writer: entity reads and
// writes under /v1, /v1/_batch, /healthz and /readyz. /metrics is mounted by
// the process, not here.
type Handler struct {
	w            *Writer
	mux          *http.ServeMux
	maxBody      int64
	log          *slog.Logger
	readyChecks  []readyCheck
	readyTimeout time.Duration
	idem         *idempotencyStore
	metrics      *httpMetrics
	bufs         sync.Pool
}

type readyCheck struct {
	name  string
	check func(context.Context) error
}

// NewHandler returns the HTTP API over w. It panics on a nil Writer or a
// negative setting, as http.Handle panics on a bad pattern: both are
// programming errors.
func NewHandler(w *Writer, cfg HandlerConfig) http.Handler {
	h, err := newHandler(w, cfg)
	if err != nil {
		panic(err)
	}
	return h
}

func newHandler(w *Writer, cfg HandlerConfig) (*Handler, error) {
	if w == nil {
		return nil, fmt.Errorf("writer: NewHandler needs a Writer")
	}
	switch {
	case cfg.MaxBodyBytes < 0:
		return nil, fmt.Errorf("writer: HandlerConfig.MaxBodyBytes must not be negative")
	case cfg.ReadyTimeout < 0:
		return nil, fmt.Errorf("writer: HandlerConfig.ReadyTimeout must not be negative")
	case cfg.IdempotencyTTL < 0:
		return nil, fmt.Errorf("writer: HandlerConfig.IdempotencyTTL must not be negative")
	case cfg.IdempotencyLease < 0:
		return nil, fmt.Errorf("writer: HandlerConfig.IdempotencyLease must not be negative")
	}
	for name, check := range cfg.ReadyChecks {
		switch {
		case check == nil:
			return nil, fmt.Errorf("writer: HandlerConfig.ReadyChecks[%q] is nil", name)
		case name == "" || name == "status" || name == "postgres" || name == "redis":
			return nil, fmt.Errorf("writer: HandlerConfig.ReadyChecks may not use the name %q", name)
		}
	}
	m, err := newHTTPMetrics(cfg.MeterProvider)
	if err != nil {
		return nil, err
	}
	h := &Handler{
		w:            w,
		mux:          http.NewServeMux(),
		maxBody:      cmp.Or(cfg.MaxBodyBytes, DefaultMaxBodyBytes),
		log:          cmp.Or(cfg.Logger, w.log),
		readyTimeout: cmp.Or(cfg.ReadyTimeout, 2*time.Second),
		idem: &idempotencyStore{
			pool:  w.pool,
			ttl:   cmp.Or(cfg.IdempotencyTTL, 24*time.Hour),
			lease: cmp.Or(cfg.IdempotencyLease, time.Minute),
		},
		metrics: m,
	}
	for name, check := range cfg.ReadyChecks {
		h.readyChecks = append(h.readyChecks, readyCheck{name, check})
	}
	slices.SortFunc(h.readyChecks, func(a, b readyCheck) int { return cmp.Compare(a.name, b.name) })

	// The id is taken from the escaped path by entityKey, not from the
	// pattern: see there.
	h.mux.HandleFunc("GET "+entityPattern, h.get)
	h.mux.HandleFunc("PUT "+entityPattern, h.write(opPut))
	h.mux.HandleFunc("PATCH "+entityPattern, h.write(opPatch))
	h.mux.HandleFunc("DELETE "+entityPattern, h.write(opDelete))
	h.mux.HandleFunc("/v1/{c}", notFound) // not redirected to /v1/{c}/
	h.mux.HandleFunc(entityPattern, methodNotAllowed("GET, HEAD, PUT, PATCH, DELETE"))
	h.mux.HandleFunc("POST /v1/_batch", h.write(opBatch))
	h.mux.HandleFunc("/v1/_batch", methodNotAllowed("POST"))
	h.mux.HandleFunc("GET /healthz", h.healthz)
	h.mux.HandleFunc("GET /readyz", h.readyz)
	h.mux.HandleFunc("/healthz", methodNotAllowed("GET, HEAD"))
	h.mux.HandleFunc("/readyz", methodNotAllowed("GET, HEAD"))
	h.mux.HandleFunc("/", notFound)
	return h, nil
}

func notFound(rw http.ResponseWriter, _ *http.Request) {
	writeProblem(rw, problem{status: http.StatusNotFound, typ: "not-found", title: "Not Found",
		detail: "no such resource; entities live at /v1/{collection}/{id}"})
}

// ServeHTTP implements http.Handler. A GET of an entity whose path needs no
// unescaping or cleaning skips the mux: it is the hot path.
func (h *Handler) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		if c, id, ok := plainEntityPath(r.URL); ok {
			h.getEntity(rw, r, c, id, time.Now())
			return
		}
	}
	h.mux.ServeHTTP(rw, r)
}

// plainEntityPath splits /v1/{c}/{id} when the mux would route it to get
// unchanged: no escaped characters (so every "/" is a separator and the
// segments are the values), one segment each, and nothing the mux would
// clean or redirect.
func plainEntityPath(u *url.URL) (collection, id string, ok bool) {
	if u.RawPath != "" {
		return "", "", false
	}
	rest, ok := strings.CutPrefix(u.Path, "/v1/")
	if !ok {
		return "", "", false
	}
	collection, id, ok = strings.Cut(rest, "/")
	if !ok || collection == "" || collection[0] == '_' || collection == "." || collection == ".." ||
		id == "" || id == "." || id == ".." || strings.IndexByte(id, '/') >= 0 {
		return "", "", false
	}
	return collection, id, true
}

func methodNotAllowed(allow string) http.HandlerFunc {
	return func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Allow", allow)
		writeProblem(rw, problem{status: http.StatusMethodNotAllowed, typ: "method-not-allowed", title: "Method Not Allowed",
			detail: r.Method + " is not allowed here; allowed: " + allow})
	}
}

// Shared header values: net/http only reads them.
var (
	hdrJSON       = []string{"application/json"}
	hdrXCacheHit  = []string{"hit"}
	hdrXCacheMiss = []string{"miss"}
	hdrNoSniff    = []string{"nosniff"}
)

// get serves GET (and HEAD) of an entity. It is the hot path: the body is
// built in a pooled buffer and the shared header values are not copied.
func (h *Handler) get(rw http.ResponseWriter, r *http.Request) {
	start := time.Now()
	c, id, err := entityKey(r)
	if err != nil {
		h.fail(rw, r, routeGet, start, err)
		return
	}
	h.getEntity(rw, r, c, id, start)
}

func (h *Handler) getEntity(rw http.ResponseWriter, r *http.Request, c, id string, start time.Time) {
	pre, err := parsePreconditions(r.Header)
	if err != nil {
		h.fail(rw, r, routeGet, start, err)
		return
	}
	e, src, err := h.w.Get(r.Context(), c, id)
	if err != nil {
		if pre.ifMatch.present && isNotFound(err) {
			err = ErrPrecondition
		}
		h.fail(rw, r, routeGet, start, err)
		return
	}
	hdr := rw.Header()
	if src == FromCache {
		hdr["X-Cache"] = hdrXCacheHit
	} else {
		hdr["X-Cache"] = hdrXCacheMiss
	}
	hdr["Etag"] = etagHeader(e.Version)
	if pre.ifMatch.present && !pre.ifMatch.matchStrong(e.Version) {
		h.fail(rw, r, routeGet, start, ErrPrecondition)
		return
	}
	if pre.ifNoneMatch.present && pre.ifNoneMatch.matchWeak(e.Version) {
		rw.WriteHeader(http.StatusNotModified)
		h.metrics.record(r.Context(), routeGet, http.StatusNotModified, start)
		return
	}
	bp := h.buffer()
	defer h.bufs.Put(bp)
	b := e.AppendRepresentation((*bp)[:0])
	if cap(b) <= maxPooledBuffer {
		*bp = b
	}
	hdr["Content-Type"] = hdrJSON
	hdr["X-Content-Type-Options"] = hdrNoSniff
	if len(b) > 2000 || r.Method == http.MethodHead {
		// net/http adds the Content-Length of a small body itself; a large
		// one would go out chunked, and HEAD sends no body to count.
		hdr["Content-Length"] = []string{strconv.Itoa(len(b))}
	}
	rw.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = rw.Write(b)
	}
	h.metrics.record(r.Context(), routeGet, http.StatusOK, start)
}

// entityPattern routes every entity request; entityKey reads its key.
const entityPattern = "/v1/{c}/{id...}"

// entityKey returns the collection and id of /v1/{c}/{id}. The id is one
// path segment, percent-encoded, and may hold "/" as %2F. It is unescaped
// from the escaped path here rather than taken from an {id} wildcard: the
// mux reads a segment that unescapes to exactly "/" as a trailing slash, so
// the id "/" would not match.
func entityKey(r *http.Request) (collection, id string, err error) {
	p := r.URL.EscapedPath()
	rest, ok := strings.CutPrefix(p, "/v1/")
	if !ok {
		return "", "", invalid("path", "must be /v1/{collection}/{id}")
	}
	_, escaped, _ := strings.Cut(rest, "/")
	if strings.IndexByte(escaped, '/') >= 0 {
		return "", "", invalid("id", `must be one path segment; encode "/" in an id as %%2F`)
	}
	if strings.IndexByte(escaped, '%') >= 0 {
		if escaped, err = url.PathUnescape(escaped); err != nil {
			return "", "", invalid("id", "is not percent-encoded correctly")
		}
	}
	return r.PathValue("c"), escaped, nil
}

func (h *Handler) buffer() *[]byte {
	if bp, ok := h.bufs.Get().(*[]byte); ok {
		return bp
	}
	b := make([]byte, 0, 1024)
	return &b
}

// etagHeaders holds the ETag header values of the first versions, so most
// reads set the header without allocating.
var etagHeaders = func() [][]string {
	t := make([][]string, 1024)
	for v := range t {
		t[v] = []string{string(appendETag(nil, int64(v)))}
	}
	return t
}()

func etagHeader(version int64) []string {
	if version >= 0 && version < int64(len(etagHeaders)) {
		return etagHeaders[version]
	}
	return []string{string(appendETag(nil, version))}
}

func appendETag(b []byte, version int64) []byte {
	b = append(b, '"')
	b = strconv.AppendInt(b, version, 10)
	return append(b, '"')
}

func (h *Handler) healthz(rw http.ResponseWriter, _ *http.Request) {
	rw.Header()["Content-Type"] = hdrJSON
	_, _ = rw.Write([]byte(`{"status":"ok"}` + "\n"))
}

// readyz reports 200 while Postgres answers, 503 otherwise; Redis and the
// extra checks only make the status "degraded".
func (h *Handler) readyz(rw http.ResponseWriter, r *http.Request) {
	checks := append([]readyCheck{
		{"postgres", func(ctx context.Context) error { return h.w.pool.Ping(ctx) }},
		{"redis", func(ctx context.Context) error { return h.w.fence.Client().Ping(ctx).Err() }},
	}, h.readyChecks...)
	errs := make([]error, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(r.Context(), h.readyTimeout)
			defer cancel()
			errs[i] = c.check(ctx)
		})
	}
	wg.Wait()
	status, code := "ok", http.StatusOK
	for i, err := range errs {
		if err == nil {
			continue
		}
		status = "degraded"
		if checks[i].name == "postgres" {
			code = http.StatusServiceUnavailable
		}
		h.log.LogAttrs(r.Context(), slog.LevelWarn, "dependency down", slog.String("dependency", checks[i].name), slog.String("error", err.Error()))
	}
	b := []byte(`{"status":`)
	b = strconv.AppendQuote(b, status)
	for i, c := range checks {
		b = append(b, ',')
		b = strconv.AppendQuote(b, c.name)
		if errs[i] == nil {
			b = append(b, `:"ok"`...)
		} else {
			b = append(b, `:"down"`...)
		}
	}
	b = append(b, "}\n"...)
	rw.Header()["Content-Type"] = hdrJSON
	rw.Header().Set("Cache-Control", "no-store")
	rw.WriteHeader(code)
	_, _ = rw.Write(b)
}

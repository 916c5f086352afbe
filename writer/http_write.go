package writer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// The write operations of the API; put, patch and delete are also the op
// names of a batch.
const (
	opPut    = "put"
	opPatch  = "patch"
	opDelete = "delete"
	opBatch  = "batch"
)

// answer is a complete HTTP answer to a write: what is sent, and what is
// stored and replayed for an Idempotency-Key.
type answer struct {
	status      int
	contentType string
	etag        string
	cacheWrite  CacheWrite
	location    string
	retryAfter  string // never stored: 5xx answers are not kept
	body        []byte
}

// The headers an answer carries, as stored for a replay.
const (
	hContentType = "Content-Type"
	hETag        = "ETag"
	hCacheWrite  = "X-Cache-Write"
	hLocation    = "Location"
)

func (a *answer) write(rw http.ResponseWriter, replayed bool) {
	h := rw.Header()
	set := func(k, v string) {
		if v != "" {
			h.Set(k, v)
		}
	}
	set(hContentType, a.contentType)
	set(hETag, a.etag)
	set(hCacheWrite, string(a.cacheWrite))
	set(hLocation, a.location)
	set("Retry-After", a.retryAfter)
	if a.contentType != "" {
		h["X-Content-Type-Options"] = hdrNoSniff
	}
	if replayed {
		h.Set("Idempotent-Replayed", "true")
	}
	if a.status != http.StatusNoContent && a.status != http.StatusNotModified {
		h.Set("Content-Length", strconv.Itoa(len(a.body)))
	}
	rw.WriteHeader(a.status)
	if len(a.body) > 0 {
		_, _ = rw.Write(a.body)
	}
}

func (a *answer) headers() map[string]string {
	m := make(map[string]string, 4)
	for k, v := range map[string]string{hContentType: a.contentType, hETag: a.etag, hCacheWrite: string(a.cacheWrite), hLocation: a.location} {
		if v != "" {
			m[k] = v
		}
	}
	return m
}

func storedAnswer(status int, headers map[string]string, body []byte) answer {
	return answer{
		status: status, contentType: headers[hContentType], etag: headers[hETag],
		cacheWrite: CacheWrite(headers[hCacheWrite]), location: headers[hLocation], body: body,
	}
}

// contentTypeError is a body of the wrong media type (415).
type contentTypeError struct {
	method, got, want string
}

func (e *contentTypeError) Error() string {
	if e.got == "" {
		return fmt.Sprintf("%s takes a body of type %s, and the request names no Content-Type", e.method, e.want)
	}
	return fmt.Sprintf("%s takes a body of type %s, not %s", e.method, e.want, e.got)
}

// checkContentType accepts what CONTRACT §3 allows for op: merge patches for
// PATCH; JSON (application/json, any +json type, or no Content-Type) for PUT
// and batches; anything for DELETE, whose body is not used.
func checkContentType(op string, h http.Header) error {
	v := h.Get("Content-Type")
	if op == opDelete || (v == "" && op != opPatch) || (v == "application/json" && op != opPatch) {
		return nil
	}
	mt, _, err := mime.ParseMediaType(v)
	if err != nil {
		mt = v
	}
	switch op {
	case opPatch:
		if mt != "application/merge-patch+json" {
			return &contentTypeError{method: "PATCH", got: mt, want: "application/merge-patch+json"}
		}
	default:
		if err != nil || (mt != "application/json" && !isJSONSuffixType(mt)) {
			method := "PUT"
			if op == opBatch {
				method = "POST /v1/_batch"
			}
			return &contentTypeError{method: method, got: mt, want: "application/json (or a +json type)"}
		}
	}
	return nil
}

// isJSONSuffixType reports a media type type/name+json (RFC 6839).
func isJSONSuffixType(mt string) bool {
	typ, sub, ok := strings.Cut(mt, "/")
	name, json := strings.CutSuffix(sub, "+json")
	return ok && typ != "" && name != "" && json
}

// readBody reads the body into the pooled buffer *bp, at most h.maxBody bytes.
// A body over the limit is a *http.MaxBytesError. With whole set, its first
// h.maxBody bytes are read and returned with that error, so that an
// Idempotency-Key can be bound to it; otherwise a Content-Length over the
// limit is refused before anything is read.
func (h *Handler) readBody(rw http.ResponseWriter, r *http.Request, bp *[]byte, whole bool) ([]byte, error) {
	if r.ContentLength > h.maxBody && !whole {
		return nil, &http.MaxBytesError{Limit: h.maxBody}
	}
	body := http.MaxBytesReader(rw, r.Body, h.maxBody)
	b := (*bp)[:0]
	if n := min(r.ContentLength, h.maxBody); n > int64(cap(b)) {
		b = make([]byte, 0, n)
	}
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := body.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return b, mbe
			}
			return nil, invalid("body", "could not be read")
		}
	}
	if cap(b) <= maxPooledBuffer {
		*bp = b
	}
	return b, nil
}

const maxPooledBuffer = 64 << 10

// write returns the handler of one write operation.
func (h *Handler) write(op string) http.HandlerFunc {
	rt := routeOf(op)
	return func(rw http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ctx := r.Context()
		key, hasKey, err := idempotencyKey(r.Header)
		if err != nil {
			h.fail(rw, r, rt, start, err)
			return
		}
		bp := h.buffer()
		defer h.bufs.Put(bp)
		body, err := h.readBody(rw, r, bp, hasKey)
		var mbe *http.MaxBytesError
		tooLarge := errors.As(err, &mbe)
		if err != nil && !(hasKey && tooLarge) {
			h.fail(rw, r, rt, start, err)
			return
		}
		req := writeRequest{op: op, header: r.Header, body: body, tooLarge: tooLarge}
		if op != opBatch {
			req.collection, req.id, req.keyErr = entityKey(r)
		}
		// Bad input is found before the key is claimed: it needs no database.
		var pl plan
		bad := err
		if bad == nil {
			pl, bad = h.prepare(ctx, req)
		}
		var cl *claim
		if hasKey {
			var stored *answer
			cl, stored, err = h.idem.claim(ctx, req.fingerprint(key))
			switch {
			case err != nil && bad != nil && problemFor(err).status >= http.StatusInternalServerError:
				// A client error is never a 5xx: with the store of answers
				// out of reach, the client error is answered, not stored.
				h.fail(rw, r, rt, start, bad)
				return
			case err != nil:
				h.fail(rw, r, rt, start, err)
				return
			case stored != nil:
				stored.write(rw, true)
				h.metrics.record(ctx, rt, stored.status, start)
				return
			}
		}
		var a answer
		var committed bool
		if bad != nil {
			a, err = problemFor(bad).answer(), bad
		} else {
			a, committed, err = h.execute(ctx, pl, cl)
		}
		if err != nil {
			h.logFailure(r, problem{status: a.status}, err)
		}
		if cl != nil {
			if serr := h.idem.settle(ctx, cl, &a, committed); serr != nil {
				h.log.LogAttrs(ctx, slog.LevelWarn, "store idempotent answer", slog.String("error", serr.Error()))
			}
		}
		a.write(rw, false)
		h.metrics.record(ctx, rt, a.status, start)
	}
}

// writeRequest is a write as the handler received it.
type writeRequest struct {
	op             string
	collection, id string
	keyErr         error // a path that holds no valid key
	header         http.Header
	body           []byte // with tooLarge, the first maxBody bytes
	tooLarge       bool   // the body is over the limit (413)
}

// target is the canonical request target an Idempotency-Key is bound to.
func (q *writeRequest) target() string {
	if q.op == opBatch {
		return "/v1/_batch"
	}
	return "/v1/" + url.PathEscape(q.collection) + "/" + escapeSegment(q.id)
}

// escapeSegment escapes an id for a path segment. An id that is a dot
// segment ("." or "..") is escaped too, or a client would resolve it away.
func escapeSegment(id string) string {
	switch id {
	case ".":
		return "%2E"
	case "..":
		return "%2E%2E"
	}
	return url.PathEscape(id)
}

func (q *writeRequest) method() string {
	switch q.op {
	case opPut:
		return http.MethodPut
	case opPatch:
		return http.MethodPatch
	case opDelete:
		return http.MethodDelete
	}
	return http.MethodPost
}

// plan is a validated write, ready to run: work runs it in a transaction,
// and direct, when not nil, runs it on its own (one round trip). build makes
// its answer once it committed.
type plan struct {
	build  func(CacheWrite) answer
	work   func(Tx) error
	direct func() (Result, error)
}

// prepare validates a write without touching the database.
func (h *Handler) prepare(ctx context.Context, q writeRequest) (p plan, err error) {
	if q.op == opBatch {
		p.build, p.work, err = h.batch(ctx, q)
	} else {
		p.build, p.work, p.direct, err = h.single(ctx, q)
	}
	return p, err
}

// execute performs a prepared write. committed reports that the write
// committed, and with it the answer for cl (its X-Cache-Write pending until
// settle records the cache write's outcome). On error the answer is the
// problem for it.
func (h *Handler) execute(ctx context.Context, p plan, cl *claim) (a answer, committed bool, err error) {
	if p.direct != nil && cl == nil {
		res, err := p.direct()
		if err != nil {
			return problemFor(err).answer(), false, err
		}
		return p.build(res.CacheWrite), true, nil
	}
	res, err := h.w.Do(ctx, func(tx Tx) error {
		if err := p.work(tx); err != nil {
			return err
		}
		if cl == nil {
			return nil
		}
		pending := p.build(CachePending)
		return cl.recordTx(ctx, tx, &pending)
	})
	if err != nil {
		return problemFor(err).answer(), false, err
	}
	return p.build(res.CacheWrite), true, nil
}

// single prepares a PUT, PATCH or DELETE of one entity: work runs it in a
// transaction, and direct, when not nil, runs it on its own (Writer.Put or
// Writer.Delete, one round trip), which a PUT or DELETE can when its
// preconditions need no read of the entity.
func (h *Handler) single(ctx context.Context, q writeRequest) (build func(CacheWrite) answer, work func(Tx) error, direct func() (Result, error), err error) {
	if q.keyErr != nil {
		return nil, nil, nil, q.keyErr
	}
	if err := validateKey(q.collection, q.id); err != nil {
		return nil, nil, nil, err
	}
	if err := checkContentType(q.op, q.header); err != nil {
		return nil, nil, nil, err
	}
	pre, err := parsePreconditions(q.header)
	if err != nil {
		return nil, nil, nil, err
	}
	// Checked before the transaction too, so bad input is a 400 even while
	// Postgres is down.
	switch {
	case q.op == opPut && !json.Valid(q.body):
		return nil, nil, nil, invalid("data", "not a JSON value")
	case q.op == opPatch && !json.Valid(q.body):
		return nil, nil, nil, invalid("merge patch", "not a JSON value")
	}
	var ch Change
	if conds, ok, cerr := pre.withoutRead(q.op); ok && cerr == nil && q.op != opPatch {
		direct = func() (Result, error) {
			var res Result
			var err error
			if q.op == opPut {
				res, err = h.w.Put(ctx, q.collection, q.id, q.body, conds...)
			} else {
				res, err = h.w.Delete(ctx, q.collection, q.id, conds...)
			}
			if err != nil {
				return res, &keyError{collection: q.collection, id: q.id, err: err}
			}
			ch = res.Changes[0]
			return res, nil
		}
	}
	work = func(tx Tx) error {
		conds, err := pre.conditions(ctx, tx, q.op, q.collection, q.id)
		if err == nil {
			switch q.op {
			case opPut:
				ch, err = tx.Put(ctx, q.collection, q.id, q.body, conds...)
			case opPatch:
				ch, err = tx.Patch(ctx, q.collection, q.id, q.body, conds...)
			case opDelete:
				ch, err = tx.Delete(ctx, q.collection, q.id, conds...)
			}
		}
		if err != nil {
			return &keyError{collection: q.collection, id: q.id, err: err}
		}
		return nil
	}
	build = func(cw CacheWrite) answer {
		a := answer{status: http.StatusOK, etag: string(appendETag(nil, ch.Version)), cacheWrite: cw}
		switch {
		case ch.Deleted:
			a.status = http.StatusNoContent
			return a
		case ch.Created:
			a.status = http.StatusCreated
			a.location = q.target()
		}
		a.contentType = "application/json"
		a.body = ch.Representation()
		return a
	}
	return build, work, direct, nil
}

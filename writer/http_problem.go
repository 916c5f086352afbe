package writer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"
)

// problemTypeBase prefixes the type of every problem+json answer (RFC 9457).
const problemTypeBase = "urn:writethrough:problem:"

// problem is an RFC 9457 problem detail.
type problem struct {
	status     int
	typ        string // appended to problemTypeBase
	title      string
	detail     string
	retryAfter string
}

func (p problem) body() []byte {
	b := []byte(`{"type":`)
	b = strconv.AppendQuote(b, problemTypeBase+p.typ)
	b = append(b, `,"title":`...)
	b = strconv.AppendQuote(b, p.title)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(p.status), 10)
	b = append(b, `,"detail":`...)
	b = appendJSONText(b, p.detail)
	return append(b, "}\n"...)
}

// appendJSONText quotes s as a JSON string; strconv.AppendQuote's Go escapes
// (\x00, \a) are not JSON, and details may echo client input.
func appendJSONText(b []byte, s string) []byte {
	b = append(b, '"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b = append(b, '\\', byte(r))
		case r < 0x20 || r == 0x7f || r == '<' || r == '>' || r == '&' || r == 0x2028 || r == 0x2029:
			b = fmt.Appendf(b, `\u%04x`, r)
		default:
			b = append(b, string(r)...)
		}
	}
	return append(b, '"')
}

var hdrProblem = []string{"application/problem+json"}

func writeProblem(rw http.ResponseWriter, p problem) {
	a := p.answer()
	a.write(rw, false)
}

func (p problem) answer() answer {
	return answer{status: p.status, contentType: "application/problem+json", retryAfter: p.retryAfter, body: p.body()}
}

// errClaimLost: the Idempotency-Key was taken over while this request ran
// (it outlived the lease), so this request must not commit.
var errClaimLost = errors.New("the Idempotency-Key was taken over by a retry of this request")

// problemFor maps an error to its answer. Client errors are 4xx; only a
// failure of the server or of Postgres is 5xx, and its detail never carries
// the underlying error (which may name SQL or hosts).
func problemFor(err error) problem {
	var (
		ie  *InvalidError
		mbe *http.MaxBytesError
		ce  *contentTypeError
		pe  *preconditionHeaderError
		be  *batchError
	)
	switch {
	case errors.As(err, &mbe):
		return problem{status: http.StatusRequestEntityTooLarge, typ: "body-too-large", title: "Content Too Large",
			detail: fmt.Sprintf("the request body is larger than %d bytes", mbe.Limit)}
	case errors.As(err, &ce):
		return problem{status: http.StatusUnsupportedMediaType, typ: "unsupported-media-type", title: "Unsupported Media Type",
			detail: ce.Error()}
	case errors.As(err, &pe):
		return problem{status: http.StatusBadRequest, typ: "bad-precondition", title: "Bad Request", detail: pe.Error()}
	case errors.As(err, &be):
		return problem{status: http.StatusBadRequest, typ: "bad-batch", title: "Bad Request", detail: be.Error()}
	case errors.As(err, &ie):
		return problem{status: http.StatusBadRequest, typ: "invalid", title: "Bad Request", detail: opPrefix(err) + ie.Error()}
	case errors.Is(err, ErrNotFound):
		return problem{status: http.StatusNotFound, typ: "not-found", title: "Not Found", detail: opPrefix(err) + notFoundDetail(err)}
	case errors.Is(err, ErrPrecondition):
		return problem{status: http.StatusPreconditionFailed, typ: "precondition-failed", title: "Precondition Failed",
			detail: opPrefix(err) + "the entity's current state does not match If-Match / If-None-Match; nothing was changed"}
	case errors.Is(err, errKeyReused):
		return problem{status: http.StatusUnprocessableEntity, typ: "idempotency-key-reused", title: "Unprocessable Content",
			detail: errKeyReused.Error()}
	case errors.Is(err, errKeyInFlight):
		return problem{status: http.StatusConflict, typ: "idempotency-key-in-flight", title: "Conflict",
			detail: errKeyInFlight.Error()}
	case errors.Is(err, errClaimLost):
		return problem{status: http.StatusConflict, typ: "idempotency-key-in-use", title: "Conflict",
			detail: errClaimLost.Error() + "; nothing was committed by this one"}
	case errors.Is(err, ErrConflict):
		return problem{status: http.StatusServiceUnavailable, typ: "conflict", title: "Service Unavailable",
			detail: "the transaction kept conflicting with concurrent writes; nothing was committed, retry", retryAfter: "1"}
	case errors.Is(err, ErrUnavailable), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return problem{status: http.StatusServiceUnavailable, typ: "unavailable", title: "Service Unavailable",
			detail: "the database is unavailable; retry, ideally with an Idempotency-Key", retryAfter: "2"}
	}
	return problem{status: http.StatusInternalServerError, typ: "internal", title: "Internal Server Error",
		detail: "the server failed; the error is logged"}
}

// opError ties an error to a batch operation.
type opError struct {
	index int
	err   error
}

func (e *opError) Error() string { return fmt.Sprintf("ops[%d]: %v", e.index, e.err) }
func (e *opError) Unwrap() error { return e.err }

func opPrefix(err error) string {
	var oe *opError
	if errors.As(err, &oe) {
		return fmt.Sprintf("ops[%d]: ", oe.index)
	}
	return ""
}

// keyError names the entity an error is about.
type keyError struct {
	collection, id string
	err            error
}

func (e *keyError) Error() string { return e.err.Error() }
func (e *keyError) Unwrap() error { return e.err }

func notFoundDetail(err error) string {
	var ke *keyError
	if errors.As(err, &ke) {
		return fmt.Sprintf("%s/%s does not exist or is deleted", ke.collection, strconv.Quote(ke.id))
	}
	return "the entity does not exist or is deleted"
}

func isNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// fail answers err as a problem and logs a server-side failure once.
func (h *Handler) fail(rw http.ResponseWriter, r *http.Request, rt route, start time.Time, err error) {
	p := problemFor(err)
	h.logFailure(r, p, err)
	writeProblem(rw, p)
	h.metrics.record(r.Context(), rt, p.status, start)
}

func (h *Handler) logFailure(r *http.Request, p problem, err error) {
	if p.status < 500 {
		return
	}
	h.log.LogAttrs(r.Context(), slog.LevelError, "request failed",
		slog.String("method", r.Method), slog.String("path", r.URL.EscapedPath()),
		slog.Int("status", p.status), slog.String("error", err.Error()))
}

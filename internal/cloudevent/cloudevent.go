// Package cloudevent encodes writethrough's change events as CloudEvents 1.0
// in the binary content mode of the CloudEvents NATS protocol binding, and
// decodes them again (CONTRACT §5). Header names are written in lower case
// exactly as the contract spells them; NATS headers are case-sensitive.
//
// It owns the wire format of an event only. Publishing, ordering and retries
// belong to the relay; the entity representation in the body belongs to the
// outbox package.
package cloudevent

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/writethrough/writethrough/outbox"
)

// Header names (CONTRACT §5).
const (
	HeaderSpecVersion   = "ce-specversion"
	HeaderID            = "ce-id"
	HeaderSource        = "ce-source"
	HeaderType          = "ce-type"
	HeaderSubject       = "ce-subject"
	HeaderTime          = "ce-time"
	HeaderEntityVersion = "ce-entityversion"
	HeaderTraceparent   = "ce-traceparent"
	HeaderTracestate    = "ce-tracestate"
	HeaderContentType   = "content-type"
	// HeaderMsgID is JetStream's deduplication header; it carries ce-id.
	HeaderMsgID = "Nats-Msg-Id"
)

// Attribute values.
const (
	SpecVersion = "1.0"
	TypePut     = "writethrough.entity.put"
	TypeDelete  = "writethrough.entity.delete"
	ContentType = "application/json"
)

// Event is one decoded change event.
type Event struct {
	// Subject is the NATS subject the event was published on.
	Subject string
	ID      string
	Source  string
	Type    string
	// EntitySubject is ce-subject, "{collection}/{id}".
	EntitySubject string
	Time          string
	EntityVersion int64
	Traceparent   string
	Tracestate    string
	ContentType   string
	// Data is the entity representation.
	Data []byte
}

// Collection of the entity (ce-subject up to its first "/").
func (e *Event) Collection() string {
	c, _, _ := strings.Cut(e.EntitySubject, "/")
	return c
}

// EntityID of the entity (everything after the first "/" of ce-subject).
func (e *Event) EntityID() string {
	_, id, _ := strings.Cut(e.EntitySubject, "/")
	return id
}

// Deleted reports whether the event records a delete.
func (e *Event) Deleted() bool { return e.Type == TypeDelete }

// NATSSubject returns the subject of a change: {prefix}.{collection}.{put|delete}.
func NATSSubject(prefix, collection string, op outbox.Op) string {
	return prefix + "." + collection + "." + string(op)
}

// Type returns ce-type for an operation.
func Type(op outbox.Op) string {
	if op == outbox.OpDelete {
		return TypeDelete
	}
	return TypePut
}

// Encode returns the NATS message of an outbox entry: headers in binary
// mode, body the entity representation, Nats-Msg-Id = ce-id.
func Encode(e *outbox.Entry, source, subjectPrefix string) *nats.Msg {
	id := e.EventID.String()
	at := outbox.FormatTime(e.CommittedAt)
	// One backing array for every header value: an event is encoded for
	// each publish, and eleven small slices were most of its allocations.
	vals := [...]string{SpecVersion, id, source, Type(e.Op), e.Collection + "/" + e.EntityID, at,
		strconv.FormatInt(e.Version, 10), ContentType, id, e.Traceparent, e.Tracestate}
	h := make(nats.Header, len(vals))
	for i, k := range [...]string{HeaderSpecVersion, HeaderID, HeaderSource, HeaderType, HeaderSubject, HeaderTime,
		HeaderEntityVersion, HeaderContentType, HeaderMsgID, HeaderTraceparent, HeaderTracestate} {
		if k == HeaderTraceparent && e.Traceparent == "" || k == HeaderTracestate && (e.Traceparent == "" || e.Tracestate == "") {
			continue
		}
		h[k] = vals[i : i+1 : i+1]
	}
	body := make([]byte, 0, 96+len(e.Collection)+len(e.EntityID)+len(e.Data))
	return &nats.Msg{
		Subject: NATSSubject(subjectPrefix, e.Collection, e.Op),
		Header:  h,
		Data:    outbox.AppendEntity(body, e.Collection, e.EntityID, e.Version, e.Data, at),
	}
}

// Size is an upper bound of what m costs against the server's max payload:
// its body plus its encoded headers.
func Size(m *nats.Msg) int64 {
	n := len(m.Data) + len("NATS/1.0\r\n\r\n")
	for k, vs := range m.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return int64(n)
}

// ErrNotEvent reports a message that is not one of our events.
var ErrNotEvent = errors.New("not a writethrough change event")

// Decode reads an event from m, checking the required attributes.
func Decode(m *nats.Msg) (*Event, error) {
	h := m.Header
	if h == nil {
		return nil, fmt.Errorf("%w: no headers", ErrNotEvent)
	}
	e := &Event{
		Subject:       m.Subject,
		ID:            h.Get(HeaderID),
		Source:        h.Get(HeaderSource),
		Type:          h.Get(HeaderType),
		EntitySubject: h.Get(HeaderSubject),
		Time:          h.Get(HeaderTime),
		Traceparent:   h.Get(HeaderTraceparent),
		Tracestate:    h.Get(HeaderTracestate),
		ContentType:   h.Get(HeaderContentType),
		Data:          m.Data,
	}
	if v := h.Get(HeaderSpecVersion); v != SpecVersion {
		return nil, fmt.Errorf("%w: %s is %q", ErrNotEvent, HeaderSpecVersion, v)
	}
	for name, v := range map[string]string{HeaderID: e.ID, HeaderSource: e.Source, HeaderSubject: e.EntitySubject, HeaderTime: e.Time} {
		if v == "" {
			return nil, fmt.Errorf("%w: missing %s", ErrNotEvent, name)
		}
	}
	if e.Type != TypePut && e.Type != TypeDelete {
		return nil, fmt.Errorf("%w: %s is %q", ErrNotEvent, HeaderType, e.Type)
	}
	if !strings.Contains(e.EntitySubject, "/") {
		return nil, fmt.Errorf("%w: %s %q has no '/'", ErrNotEvent, HeaderSubject, e.EntitySubject)
	}
	v, err := strconv.ParseInt(h.Get(HeaderEntityVersion), 10, 64)
	if err != nil || v < 1 {
		return nil, fmt.Errorf("%w: bad %s %q", ErrNotEvent, HeaderEntityVersion, h.Get(HeaderEntityVersion))
	}
	e.EntityVersion = v
	return e, nil
}

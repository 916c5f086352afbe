package outbox

import (
	"context"
	"fmt"
	"hash/fnv"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Partitions is the number of partitions keys hash to. Per-key order needs one
// owner per key at a time; relays lease whole partitions.
const Partitions = 64

// Op is the kind of change an entry records.
type Op string

const (
	OpPut    Op = "put"
	OpDelete Op = "delete"
)

// TimeFormat is how updated_at and ce-time are written: RFC 3339 with
// microseconds, in UTC.
const TimeFormat = "2006-01-02T15:04:05.000000Z"

// FormatTime writes t in TimeFormat.
func FormatTime(t time.Time) string {
	return string(AppendTime(make([]byte, 0, len(TimeFormat)), t))
}

// AppendTime appends t in TimeFormat. It writes the digits itself:
// time.Format parses its layout on every call, and every event and cache
// write formats a time.
func AppendTime(b []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	hour, minute, sec := t.Clock()
	if year < 0 || year > 9999 {
		return t.AppendFormat(b, TimeFormat)
	}
	b = appendDigits(b, year, 4)
	b = append(b, '-')
	b = appendDigits(b, int(month), 2)
	b = append(b, '-')
	b = appendDigits(b, day, 2)
	b = append(b, 'T')
	b = appendDigits(b, hour, 2)
	b = append(b, ':')
	b = appendDigits(b, minute, 2)
	b = append(b, ':')
	b = appendDigits(b, sec, 2)
	b = append(b, '.')
	b = appendDigits(b, t.Nanosecond()/1000, 6)
	return append(b, 'Z')
}

// appendDigits appends v, zero-padded to width digits (v >= 0).
func appendDigits(b []byte, v, width int) []byte {
	var buf [8]byte
	for i := width - 1; i >= 0; i-- {
		buf[i] = byte('0' + v%10)
		v /= 10
	}
	return append(b, buf[:width]...)
}

// PartitionOf returns the partition of an entity key.
func PartitionOf(collection, id string) int {
	h := fnv.New32a()
	h.Write([]byte(collection))
	h.Write([]byte{0})
	h.Write([]byte(id))
	return int(h.Sum32() % Partitions)
}

// Entry is one committed change.
type Entry struct {
	Seq int64
	// EventID goes to pgx as [16]byte, which it encodes and scans in
	// binary directly; as uuid.UUID it would take the driver.Valuer path
	// through text, after a failed binary attempt.
	EventID     uuid.UUID
	Partition   int
	Collection  string
	EntityID    string
	Version     int64
	Op          Op
	Data        []byte // JSON text as Postgres prints it; nil for a delete
	CommittedAt time.Time
	Traceparent string
	Tracestate  string
}

// Representation returns the entity representation of the change, the body
// of its event: {"collection","id","version","data","updated_at"}, with
// "data":null,"deleted":true for a delete.
func (e *Entry) Representation() []byte {
	return AppendEntity(nil, e.Collection, e.EntityID, e.Version, e.Data, FormatTime(e.CommittedAt))
}

// AppendEntity appends the entity representation to b. data nil means a
// deleted entity.
func AppendEntity(b []byte, collection, id string, version int64, data []byte, updatedAt string) []byte {
	b = append(b, `{"collection":`...)
	b = strconv.AppendQuote(b, collection) // collections are plain ASCII
	b = append(b, `,"id":`...)
	b = appendJSONString(b, id)
	b = append(b, `,"version":`...)
	b = strconv.AppendInt(b, version, 10)
	if data == nil {
		b = append(b, `,"data":null,"deleted":true`...)
	} else {
		b = append(b, `,"data":`...)
		b = append(b, data...)
	}
	b = append(b, `,"updated_at":"`...)
	b = append(b, updatedAt...)
	return append(b, `"}`...)
}

const hexDigits = "0123456789abcdef"

// appendJSONString writes s as a JSON string. Ids are valid UTF-8 without
// control characters, but quote and backslash need escaping, and <, >, &,
// U+2028 and U+2029 are escaped as encoding/json does.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b = append(b, '\\', byte(r))
		case r < 0x20 || r == '<' || r == '>' || r == '&' || r == 0x2028 || r == 0x2029:
			b = append(b, '\\', 'u', hexDigits[(r>>12)&0xf], hexDigits[(r>>8)&0xf], hexDigits[(r>>4)&0xf], hexDigits[r&0xf])
		default:
			b = append(b, string(r)...)
		}
	}
	return append(b, '"')
}

const insertSQL = `
INSERT INTO outbox (event_id, part, collection, entity_id, version, op, data, committed_at, traceparent, tracestate)
SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::json[], $8::timestamptz[], $9::text[], $10::text[])
RETURNING seq, event_id`

// insertOneSQL is insertSQL for the common single change: plain parameters
// cost less to encode and plan than ten one-element arrays.
const insertOneSQL = `
INSERT INTO outbox (event_id, part, collection, entity_id, version, op, data, committed_at, traceparent, tracestate)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
RETURNING seq`

// QueueInsert queues the insert of entries on b, so the writer can send it in
// one round trip with its COMMIT; Seq is set when the batch's results are
// read. It fills in a missing EventID (UUIDv7) and Partition.
func QueueInsert(b *pgx.Batch, entries []*Entry) error {
	n := len(entries)
	if n == 0 {
		return nil
	}
	if n == 1 {
		return queueInsertOne(b, entries[0])
	}
	ids := make([][16]byte, n)
	parts := make([]int32, n)
	cols := make([]string, n)
	eids := make([]string, n)
	vers := make([]int64, n)
	ops := make([]string, n)
	datas := make([]*string, n)
	times := make([]time.Time, n)
	tps := make([]*string, n)
	tss := make([]*string, n)
	for i, e := range entries {
		if err := e.fillIDs(); err != nil {
			return err
		}
		ids[i], parts[i], cols[i], eids[i], vers[i], ops[i], times[i] = [16]byte(e.EventID), int32(e.Partition), e.Collection, e.EntityID, e.Version, string(e.Op), e.CommittedAt
		if e.Data != nil {
			s := string(e.Data)
			datas[i] = &s
		}
		if e.Traceparent != "" {
			tps[i] = &e.Traceparent
		}
		if e.Tracestate != "" {
			tss[i] = &e.Tracestate
		}
	}
	b.Queue(insertSQL, ids, parts, cols, eids, vers, ops, datas, times, tps, tss).Query(func(rows pgx.Rows) error {
		byID := make(map[uuid.UUID]*Entry, n)
		for _, e := range entries {
			byID[e.EventID] = e
		}
		var seq int64
		var id uuid.UUID
		_, err := pgx.ForEachRow(rows, []any{&seq, (*[16]byte)(&id)}, func() error {
			if e := byID[id]; e != nil {
				e.Seq = seq
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("insert outbox entries: %w", err)
		}
		return nil
	})
	return nil
}

// fillIDs gives e a new event id (UUIDv7) when it has none, and its
// partition.
func (e *Entry) fillIDs() error {
	if e.EventID == uuid.Nil {
		id, err := uuid.NewV7()
		if err != nil {
			return fmt.Errorf("new event id: %w", err)
		}
		e.EventID = id
	}
	e.Partition = PartitionOf(e.Collection, e.EntityID)
	return nil
}

func queueInsertOne(b *pgx.Batch, e *Entry) error {
	if err := e.fillIDs(); err != nil {
		return err
	}
	var data, tp, ts *string
	if e.Data != nil {
		d := string(e.Data)
		data = &d
	}
	if e.Traceparent != "" {
		tp = &e.Traceparent
	}
	if e.Tracestate != "" {
		ts = &e.Tracestate
	}
	b.Queue(insertOneSQL, [16]byte(e.EventID), int32(e.Partition), e.Collection, e.EntityID, e.Version, string(e.Op), data, e.CommittedAt, tp, ts).
		QueryRow(func(row pgx.Row) error {
			if err := row.Scan(&e.Seq); err != nil {
				return fmt.Errorf("insert outbox entry: %w", err)
			}
			return nil
		})
	return nil
}

// notifySQL wakes the relays LISTENing on "<schema>_outbox". It runs after
// the commit, in its own statement: a NOTIFY inside the writing transaction
// would take Postgres's global notify lock through the commit and serialize
// every writer's WAL flush.
//
// The payload names the partitions that have new entries, as a PartSet in
// 16 hexadecimal digits, so a relay woken by it reads only those; an empty
// payload (or one it cannot read) means any partition.
const notifySQL = `SELECT pg_notify(current_schema() || '_outbox', $1)`

// PartSet is a set of partitions, bit p for partition p.
type PartSet uint64

// AllParts is every partition.
const AllParts = PartSet(1<<Partitions - 1)

// a PartSet must hold every partition.
var _ = [64 - Partitions]struct{}{}

// With returns s with partition p added.
func (s PartSet) With(p int) PartSet { return s | 1<<uint(p) }

// Has reports whether partition p is in s.
func (s PartSet) Has(p int) bool { return s&(1<<uint(p)) != 0 }

// String is the notification payload for s: 16 hexadecimal digits.
func (s PartSet) String() string { return fmt.Sprintf("%016x", uint64(s)) }

// ParsePartSet reads a notification payload; anything but 16 hexadecimal
// digits naming some partition means all of them.
func ParsePartSet(payload string) PartSet {
	if len(payload) != 16 {
		return AllParts
	}
	v, err := strconv.ParseUint(payload, 16, 64)
	if err != nil || PartSet(v)&AllParts == 0 {
		return AllParts
	}
	return PartSet(v) & AllParts
}

// Notify wakes the relays of the schema in the connection's search_path
// for every partition.
func Notify(ctx context.Context, pool *pgxpool.Pool) error {
	return NotifyParts(ctx, pool, AllParts)
}

// NotifyParts wakes the relays of the schema in the connection's
// search_path for the partitions in parts.
func NotifyParts(ctx context.Context, pool *pgxpool.Pool, parts PartSet) error {
	payload := ""
	if parts != AllParts {
		payload = parts.String()
	}
	if _, err := pool.Exec(ctx, notifySQL, payload); err != nil {
		return fmt.Errorf("notify relays: %w", err)
	}
	return nil
}

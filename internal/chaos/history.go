package chaos

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// Kind of a recorded operation.
type Kind string

const (
	KindPut      Kind = "put"
	KindPatch    Kind = "patch"
	KindDelete   Kind = "delete"
	KindBatch    Kind = "batch"
	KindGetAPI   Kind = "get-api"
	KindGetRedis Kind = "get-redis"
)

// IsWrite reports whether the kind changes entities.
func (k Kind) IsWrite() bool {
	return k == KindPut || k == KindPatch || k == KindDelete || k == KindBatch
}

// Cache-write outcomes (the X-Cache-Write header) and read sources.
const (
	CacheOK      = "ok"
	CachePending = "pending"

	SourceHit   = "hit"   // API read, X-Cache: hit
	SourceMiss  = "miss"  // API read, X-Cache: miss (served from Postgres)
	SourceRedis = "redis" // direct HMGET
)

// Item is what one operation wrote or saw for one key. For a read, Version 0
// is a miss (API 404 or an absent Redis hash). For a batch there is one item
// per op, in order; the same key may appear twice.
type Item struct {
	Key     string // "collection/id"
	Version int64
	Deleted bool
	// Data is the JSON text of the entity's data; empty when deleted or
	// unknown.
	Data string
}

// Op is one recorded operation. Times are nanoseconds since the start of the
// run on a monotonic clock.
type Op struct {
	ID       int
	Client   int
	Kind     Kind
	Invoke   int64
	Complete int64
	// Status is the HTTP status of an API call; 0 means no answer (transport
	// error or timeout: the outcome is unknown). A direct Redis read has 200
	// on success and 0 on an error.
	Status     int
	Err        string
	CacheWrite string // writes: X-Cache-Write
	Source     string // reads: SourceHit, SourceMiss or SourceRedis
	Items      []Item
}

// OK reports whether the operation succeeded: 2xx for a write, 200 for an
// API read, a answered HMGET.
func (o *Op) OK() bool { return o.Status >= 200 && o.Status < 300 }

// NotFound reports an API 404 (absent or deleted entity).
func (o *Op) NotFound() bool { return o.Status == 404 }

// Unknown reports a write whose outcome is unknown: no answer, or a 5xx.
func (o *Op) Unknown() bool { return o.Kind.IsWrite() && (o.Status == 0 || o.Status >= 500) }

// IsRead reports whether the operation only reads.
func (o *Op) IsRead() bool { return o.Kind == KindGetAPI || o.Kind == KindGetRedis }

// Final returns, per key, the last item an operation wrote or saw (a batch
// that touches a key twice leaves only its last version visible).
func (o *Op) Final() map[string]Item {
	m := make(map[string]Item, len(o.Items))
	for _, it := range o.Items {
		m[it.Key] = it
	}
	return m
}

func (o *Op) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "#%d c%d %s [%s, %s] status=%d", o.ID, o.Client, o.Kind, fmtTime(o.Invoke), fmtTime(o.Complete), o.Status)
	if o.CacheWrite != "" {
		fmt.Fprintf(&b, " cache-write=%s", o.CacheWrite)
	}
	if o.Source != "" {
		fmt.Fprintf(&b, " source=%s", o.Source)
	}
	for _, it := range o.Items {
		fmt.Fprintf(&b, " %s@%d", it.Key, it.Version)
		if it.Deleted {
			b.WriteString("(deleted)")
		}
	}
	if o.Err != "" {
		fmt.Fprintf(&b, " err=%q", o.Err)
	}
	return b.String()
}

func fmtTime(ns int64) string {
	return fmt.Sprintf("%.3fs", time.Duration(ns).Seconds())
}

// FaultKind names an injected fault.
type FaultKind string

const (
	FaultRedisCut     FaultKind = "redis-cut"
	FaultRedisSlow    FaultKind = "redis-slow"
	FaultRedisReset   FaultKind = "redis-reset"
	FaultRedisRestart FaultKind = "redis-restart-empty"
	FaultNATSCut      FaultKind = "nats-cut"
	FaultNATSSlow     FaultKind = "nats-slow"
	FaultNATSReset    FaultKind = "nats-reset"
	FaultPGSlow       FaultKind = "pg-slow"
	FaultPGReset      FaultKind = "pg-reset"
	FaultKill         FaultKind = "kill"
)

// AllFaultKinds lists every kind, in report order.
var AllFaultKinds = []FaultKind{
	FaultRedisCut, FaultRedisSlow, FaultRedisReset, FaultRedisRestart,
	FaultNATSCut, FaultNATSSlow, FaultNATSReset,
	FaultPGSlow, FaultPGReset, FaultKill,
	FaultCrashWriterAfterCommit, FaultCrashWriterAfterCache,
	FaultCrashRelayAfterPublish, FaultCrashRelayAfterRepair,
}

// TouchesRedis reports whether the fault can make the service unable to
// reach Redis (so an API read may be served from Postgres, newer than the
// cache, until the relay repairs it: CONTRACT §4's allowed window).
func (k FaultKind) TouchesRedis() bool {
	// relay-after-repair is armed with Redis cut for a moment (faults.go).
	return k == FaultRedisCut || k == FaultRedisSlow || k == FaultRedisReset || k == FaultRedisRestart ||
		k == FaultCrashRelayAfterRepair
}

// Fault is one injected fault, from its start to the moment it healed (for a
// kill or crash point: until the restarted service answered again).
type Fault struct {
	Kind   FaultKind
	Detail string // e.g. the crash point's name
	Start  int64
	End    int64
}

func (f Fault) String() string {
	s := fmt.Sprintf("%s [%s, %s]", f.Kind, fmtTime(f.Start), fmtTime(f.End))
	if f.Detail != "" {
		s += " " + f.Detail
	}
	return s
}

// Change is one committed change as the outbox recorded it.
type Change struct {
	EventID     string
	Key         string
	Version     int64
	Deleted     bool
	Data        string
	CommittedAt string // updated_at in the entity representation's format
}

// Row is an entity's current row in Postgres; Data is empty when deleted.
type Row struct {
	Version   int64
	Deleted   bool
	Data      string
	UpdatedAt string
}

// Cached is a key's hash in Redis.
type Cached struct {
	Version   int64
	Deleted   bool // no d field
	Data      string
	UpdatedAt string
}

// Event is one message read from the stream.
type Event struct {
	StreamSeq uint64
	Subject   string
	ID        string // ce-id
	Type      string // ce-type
	Key       string // from ce-subject
	Version   int64  // ce-entityversion
	Time      string // ce-time
	Deleted   bool   // body "deleted":true
	Data      string // body "data" (JSON text), empty when deleted
	// Problem describes a malformed message (bad headers or body).
	Problem string
}

// History is everything a run recorded. Record is safe for concurrent use.
type History struct {
	mu     sync.Mutex
	start  time.Time
	Ops    []Op
	Faults []Fault
	// End is when the workload stopped and the last fault healed.
	End int64
}

// NewHistory starts the clock.
func NewHistory() *History { return &History{start: time.Now()} }

// Now returns the time since the start.
func (h *History) Now() int64 { return int64(time.Since(h.start)) }

// Record appends op and gives it an id.
func (h *History) Record(op Op) {
	h.mu.Lock()
	op.ID = len(h.Ops)
	h.Ops = append(h.Ops, op)
	h.mu.Unlock()
}

// AddFault appends a fault.
func (h *History) AddFault(f Fault) {
	h.mu.Lock()
	h.Faults = append(h.Faults, f)
	h.mu.Unlock()
}

// LastHeal is the end of the last fault (0 without faults).
func (h *History) LastHeal() int64 {
	var t int64
	for _, f := range h.Faults {
		t = max(t, f.End)
	}
	return t
}

// sortedByInvoke returns the indexes of ops sorted by invoke time.
func sortedBy(ops []*Op, key func(*Op) int64) []*Op {
	out := append([]*Op(nil), ops...)
	sort.SliceStable(out, func(i, j int) bool { return key(out[i]) < key(out[j]) })
	return out
}

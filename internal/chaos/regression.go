package chaos

import (
	"container/heap"
	"fmt"
)

// CheckNoRegression checks, per key, that a read which starts after another
// read completed never sees a lower version (CONTRACT §4). A miss (absent
// hash, API 404) is allowed at any time.
//
// The one exception is the contract's allowed window: an API read served
// from Postgres (X-Cache: miss) during a fault that kept Redis unreachable or
// slow, or right after it while the service reconnects, may be newer than
// the cache until the relay repairs it. Such a read bounds later reads only
// from RepairWindow after that fault healed. (A miss that reached Redis
// filled it through the fence, so this exemption hides nothing else.)
func CheckNoRegression(h *History) Result {
	var vs []Violation
	checked := 0
	for key, reads := range keyReads(h.Ops) {
		checked += len(reads)
		if v, ok := regressionIn(key, reads, h.Faults); ok {
			vs = append(vs, v)
		}
	}
	return finish(NameRegression, checked, vs)
}

// boundUntil returns from when a read bounds later reads: at once, or, for a
// Postgres-served API read during a Redis fault, RepairWindow after it healed.
func boundUntil(op *Op, faults []Fault) int64 {
	if op.Kind != KindGetAPI || op.Source != SourceMiss {
		return 0
	}
	var until int64
	for _, f := range faults {
		if f.Kind.TouchesRedis() && f.Start <= op.Complete && op.Invoke < f.End+int64(RepairWindow) {
			until = max(until, f.End+int64(RepairWindow))
		}
	}
	return until
}

// regressionIn sweeps the reads of one key in invoke order, keeping the
// highest version (and its read) among the reads that completed before.
func regressionIn(key string, reads []*Op, faults []Fault) (Violation, bool) {
	byInvoke := sortedBy(reads, func(o *Op) int64 { return o.Invoke })
	byComplete := sortedBy(reads, func(o *Op) int64 { return o.Complete })
	var (
		best    *Op // highest version among the reads that bound now
		waiting deferredReads
		next    int
	)
	raise := func(op *Op) {
		if best == nil || seen(op) > seen(best) {
			best = op
		}
	}
	for _, r := range byInvoke {
		for ; next < len(byComplete) && byComplete[next].Complete < r.Invoke; next++ {
			prev := byComplete[next]
			if seen(prev) == 0 {
				continue
			}
			if until := boundUntil(prev, faults); until > r.Invoke {
				heap.Push(&waiting, deferred{op: prev, from: until})
				continue
			}
			raise(prev)
		}
		for waiting.Len() > 0 && waiting[0].from <= r.Invoke {
			raise(heap.Pop(&waiting).(deferred).op)
		}
		if v := seen(r); v != 0 && best != nil && v < seen(best) {
			return Violation{
				Checker: NameRegression, Key: key, At: r.Invoke,
				Msg: fmt.Sprintf("read saw version %d after a read that completed earlier saw %d", v, seen(best)),
				Ops: []Op{*best, *r},
			}, true
		}
	}
	return Violation{}, false
}

type deferred struct {
	op   *Op
	from int64
}

// deferredReads is a min-heap on from.
type deferredReads []deferred

func (d deferredReads) Len() int           { return len(d) }
func (d deferredReads) Less(i, j int) bool { return d[i].from < d[j].from }
func (d deferredReads) Swap(i, j int)      { d[i], d[j] = d[j], d[i] }
func (d *deferredReads) Push(x any)        { *d = append(*d, x.(deferred)) }
func (d *deferredReads) Pop() any {
	old := *d
	x := old[len(old)-1]
	*d = old[:len(old)-1]
	return x
}

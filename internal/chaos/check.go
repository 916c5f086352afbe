package chaos

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Checker names, in report order.
const (
	NameRegression  = "no-regression"
	NameRYW         = "read-your-ack-write"
	NameLinear      = "linearizable"
	NameConvergence = "convergence"
	NameEvents      = "events"
	NameLost        = "nothing-lost"
)

// Checkers lists every checker, in report order.
var Checkers = []string{NameRegression, NameRYW, NameLinear, NameConvergence, NameEvents, NameLost}

// RepairWindow is how long CONTRACT §4 lets the cache lag behind Postgres
// after a fault heals.
const RepairWindow = 5 * time.Second

// Violation is one broken promise, with the operations that show it.
type Violation struct {
	Checker string
	Key     string
	At      int64 // when it shows, for ordering
	Msg     string
	Ops     []Op
}

func (v Violation) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s: %s", v.Checker, v.Key, v.Msg)
	for _, op := range v.Ops {
		fmt.Fprintf(&b, "\n    %s", op.String())
	}
	return b.String()
}

// Result of one checker.
type Result struct {
	Checker    string
	Violations []Violation // sorted by At; the first is the one to read
	// Checked counts what the checker looked at (operations, keys, events).
	Checked int
	// Note is a short remark for the report (e.g. segments checked).
	Note string
}

// First returns the first violation, or nil.
func (r *Result) First() *Violation {
	if len(r.Violations) == 0 {
		return nil
	}
	return &r.Violations[0]
}

func finish(name string, checked int, vs []Violation) Result {
	sort.SliceStable(vs, func(i, j int) bool { return vs[i].At < vs[j].At })
	return Result{Checker: name, Violations: vs, Checked: checked}
}

// keyReads groups the successful reads (hits and misses) by key.
func keyReads(ops []Op) map[string][]*Op {
	m := map[string][]*Op{}
	for i := range ops {
		op := &ops[i]
		if !op.IsRead() || len(op.Items) != 1 {
			continue
		}
		if op.OK() || op.NotFound() {
			m[op.Items[0].Key] = append(m[op.Items[0].Key], op)
		}
	}
	return m
}

// seen returns the version a read observed; 0 for a miss or a 404.
func seen(op *Op) int64 {
	if !op.OK() {
		return 0
	}
	return op.Items[0].Version
}

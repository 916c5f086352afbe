package chaos

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"
)

// LinearOptions tune CheckLinearizable.
type LinearOptions struct {
	// Settle is how long after a fault heals its segment stays excluded (the
	// cache may lag until the relay repairs it). Default RepairWindow.
	Settle time.Duration
	// Timeout bounds porcupine per key and segment; a timeout counts as
	// unknown, not as a violation. Default 20s.
	Timeout time.Duration
	// VisualizeDir, when set, receives an HTML visualisation of each failing
	// key's history (porcupine.Visualize).
	VisualizeDir string
}

// Segment is a stretch of the run with no fault active or settling.
type Segment struct{ Start, End int64 }

// FaultFreeSegments returns the complement of the faults (each extended by
// settle) within [0, end].
func FaultFreeSegments(faults []Fault, end int64, settle time.Duration) []Segment {
	type span struct{ s, e int64 }
	spans := make([]span, 0, len(faults))
	for _, f := range faults {
		spans = append(spans, span{f.Start, f.End + int64(settle)})
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].s < spans[j].s })
	var segs []Segment
	cur := int64(0)
	for _, sp := range spans {
		if sp.s > cur {
			segs = append(segs, Segment{cur, sp.s})
		}
		cur = max(cur, sp.e)
	}
	if end > cur {
		segs = append(segs, Segment{cur, end})
	}
	return segs
}

// regOp is one step of the versioned-register model.
type regOp struct {
	op       *Op
	write    bool
	notFound bool // API 404 (or a PATCH/DELETE 404): absent or deleted
	version  int64
	deleted  bool
	data     string
}

// regState is the register: when exact, the entity is at version lo with the
// given deletion and data; otherwise it is at lo or later and nothing more
// is known.
//
// The model allows writes the history does not hold (a write whose answer
// was lost, or one invoked before the segment began): a write or a read may
// move the register to any higher version. What it forbids is what the
// contract forbids: a version going back, a write that does not exceed
// every version seen before it in real time, a read missing a completed
// write, two different values under one version.
type regState struct {
	lo      int64
	exact   bool
	deleted bool
	data    string
}

func regStep(st any, in any, _ any) (bool, any) {
	s := st.(regState)
	o := in.(regOp)
	switch {
	case o.write:
		if o.version <= s.lo {
			return false, s
		}
		return true, regState{lo: o.version, exact: true, deleted: o.deleted, data: o.data}
	case o.notFound:
		if s.exact && !s.deleted {
			// Only a later delete, not in the history, explains it.
			return true, regState{lo: s.lo + 1}
		}
		return true, s
	default:
		if o.version < s.lo {
			return false, s
		}
		if o.version == s.lo && s.exact && (o.deleted != s.deleted || o.data != s.data) {
			return false, s
		}
		return true, regState{lo: o.version, exact: true, deleted: o.deleted, data: o.data}
	}
}

var registerModel = porcupine.Model{
	Init: func() any { return regState{} },
	Step: regStep,
	DescribeOperation: func(in, _ any) string {
		o := in.(regOp)
		switch {
		case o.notFound:
			return fmt.Sprintf("%s → 404", o.op.Kind)
		case o.write && o.deleted:
			return fmt.Sprintf("%s → v%d deleted", o.op.Kind, o.version)
		case o.write:
			return fmt.Sprintf("%s → v%d %s", o.op.Kind, o.version, o.data)
		case o.deleted:
			return fmt.Sprintf("%s(%s) → v%d deleted", o.op.Kind, o.op.Source, o.version)
		default:
			return fmt.Sprintf("%s(%s) → v%d %s", o.op.Kind, o.op.Source, o.version, o.data)
		}
	},
	DescribeState: func(st any) string {
		s := st.(regState)
		switch {
		case !s.exact:
			return fmt.Sprintf("≥v%d", s.lo)
		case s.deleted:
			return fmt.Sprintf("v%d deleted", s.lo)
		default:
			return fmt.Sprintf("v%d %s", s.lo, s.data)
		}
	},
}

// registerOps turns the recorded operations into per-key register steps.
// Redis misses constrain nothing and are left out, as are writes with an
// unknown outcome and client errors.
//
// A PATCH or DELETE answered 404 is left out too: it read Postgres under the
// row lock, and Postgres runs ahead of the cache between a commit and its
// cache write. The contract makes a write visible to readers only when it is
// acknowledged, so a concurrent writer's commit may show in a 404 before a
// cache reader can see it. (A GET served from Postgres fills the cache
// through the fence before it answers, so it stays in.)
func registerOps(ops []*Op) map[string][]porcupine.Operation {
	out := map[string][]porcupine.Operation{}
	add := func(key string, op *Op, r regOp) {
		r.op = op
		out[key] = append(out[key], porcupine.Operation{
			ClientId: op.Client, Input: r, Call: op.Invoke, Return: op.Complete, Metadata: op.ID,
		})
	}
	for _, op := range ops {
		switch {
		case op.NotFound() && op.Kind == KindGetAPI && len(op.Items) == 1:
			add(op.Items[0].Key, op, regOp{notFound: true})
		case !op.OK():
		case op.Kind.IsWrite():
			for key, it := range op.Final() {
				add(key, op, regOp{write: true, version: it.Version, deleted: it.Deleted, data: it.Data})
			}
		case len(op.Items) == 1 && op.Items[0].Version > 0:
			it := op.Items[0]
			add(it.Key, op, regOp{version: it.Version, deleted: it.Deleted, data: it.Data})
		}
	}
	return out
}

// CheckLinearizable checks each fault-free segment of the run, key by key,
// against the versioned-register model with porcupine.
func CheckLinearizable(h *History, opt LinearOptions) Result {
	if opt.Settle == 0 {
		opt.Settle = RepairWindow
	}
	if opt.Timeout == 0 {
		opt.Timeout = 20 * time.Second
	}
	end := h.End
	for _, op := range h.Ops {
		end = max(end, op.Complete)
	}
	segs := FaultFreeSegments(h.Faults, end+1, opt.Settle)
	var (
		vs      []Violation
		checked int
		unknown int
	)
	for si, seg := range segs {
		var in []*Op
		for i := range h.Ops {
			op := &h.Ops[i]
			if op.Invoke >= seg.Start && op.Complete <= seg.End {
				in = append(in, op)
			}
		}
		checked += len(in)
		perKey := registerOps(in)
		keys := make([]string, 0, len(perKey))
		for k := range perKey {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, key := range keys {
			hist := perKey[key]
			res, info := porcupine.CheckOperationsVerbose(registerModel, hist, opt.Timeout)
			switch res {
			case porcupine.Unknown:
				unknown++
			case porcupine.Illegal:
				v := Violation{
					Checker: NameLinear, Key: key,
					Msg: fmt.Sprintf("segment %d [%s, %s]: %d operations on the key are not linearizable as a versioned register", si, fmtTime(seg.Start), fmtTime(seg.End), len(hist)),
					Ops: stuckOps(h, hist, info),
				}
				if len(v.Ops) > 0 {
					v.At = v.Ops[len(v.Ops)-1].Invoke
				}
				if opt.VisualizeDir != "" {
					path := filepath.Join(opt.VisualizeDir, fmt.Sprintf("linearizability-seg%d-%s.html", si, sanitize(key)))
					if err := os.MkdirAll(opt.VisualizeDir, 0o755); err == nil {
						if err := porcupine.VisualizePath(registerModel, info, path); err == nil {
							v.Msg += "; visualisation: " + path
						}
					}
				}
				vs = append(vs, v)
			}
		}
	}
	r := finish(NameLinear, checked, vs)
	r.Note = fmt.Sprintf("%d fault-free segments", len(segs))
	if unknown > 0 {
		r.Note += fmt.Sprintf(", %d key histories timed out (unknown)", unknown)
	}
	return r
}

// stuckOps explains a failure: the last operations of the longest partial
// linearization porcupine found, then the earliest operation it could not
// place after them.
func stuckOps(h *History, hist []porcupine.Operation, info porcupine.LinearizationInfo) []Op {
	parts := info.PartialLinearizations()
	if len(parts) == 0 || len(parts[0]) == 0 {
		return nil
	}
	longest := parts[0][0]
	for _, l := range parts[0] {
		if len(l) > len(longest) {
			longest = l
		}
	}
	done := make(map[int]bool, len(longest))
	for _, id := range longest {
		done[id] = true
	}
	var out []Op
	for _, id := range longest[max(0, len(longest)-3):] {
		out = append(out, h.Ops[hist[id].Metadata.(int)])
	}
	stuck := -1
	for id := range hist {
		if !done[id] && (stuck < 0 || hist[id].Call < hist[stuck].Call) {
			stuck = id
		}
	}
	if stuck >= 0 {
		out = append(out, h.Ops[hist[stuck].Metadata.(int)])
	}
	return out
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '_'
		}
	}
	return string(b)
}

package chaos

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is the outcome of one run, or of several merged.
type Report struct {
	Seeds    []int64
	Duration time.Duration
	Ops      map[Kind]int
	Unknown  int // writes with an unknown outcome
	// ServerErrors counts answers 500 and other 5xx but 503: the contract
	// knows only 503 (Postgres unavailable or a persisting conflict).
	ServerErrors int
	Pending      int // writes answered X-Cache-Write: pending
	Events       int
	Faults       map[FaultKind]int
	Results      map[string]*Result
	ConvTimes    []time.Duration
	// ConvRepaired counts keys that diverged when the workload stopped (so
	// their convergence time measures a repair).
	ConvRepaired int
	// UnexpectedExits counts service exits no fault caused (crashes).
	UnexpectedExits int
}

// NewReport builds the report of one run from its history and results.
func NewReport(seed int64, h *History, conv Convergence, events int, results ...Result) *Report {
	r := &Report{Seeds: []int64{seed}, Duration: time.Duration(h.End), Ops: map[Kind]int{},
		Faults: map[FaultKind]int{}, Results: map[string]*Result{}, Events: events}
	for i := range h.Ops {
		op := &h.Ops[i]
		r.Ops[op.Kind]++
		if op.Unknown() {
			r.Unknown++
		}
		if op.Status >= 500 && op.Status != 503 {
			r.ServerErrors++
		}
		if op.Kind.IsWrite() && op.OK() && op.CacheWrite == CachePending {
			r.Pending++
		}
	}
	for _, f := range h.Faults {
		r.Faults[f.Kind]++
	}
	for _, res := range results {
		res := res
		r.Results[res.Checker] = &res
	}
	for _, t := range conv.Times {
		r.ConvTimes = append(r.ConvTimes, t)
	}
	r.ConvRepaired = conv.AtStart
	return r
}

// Merge adds o to r.
func (r *Report) Merge(o *Report) {
	r.Seeds = append(r.Seeds, o.Seeds...)
	r.Duration += o.Duration
	for k, n := range o.Ops {
		r.Ops[k] += n
	}
	r.Unknown += o.Unknown
	r.ServerErrors += o.ServerErrors
	r.Pending += o.Pending
	r.Events += o.Events
	for k, n := range o.Faults {
		r.Faults[k] += n
	}
	for name, res := range o.Results {
		cur, ok := r.Results[name]
		if !ok {
			c := *res
			r.Results[name] = &c
			continue
		}
		cur.Checked += res.Checked
		cur.Violations = append(cur.Violations, res.Violations...)
	}
	r.ConvTimes = append(r.ConvTimes, o.ConvTimes...)
	r.UnexpectedExits += o.UnexpectedExits
	r.ConvRepaired += o.ConvRepaired
}

// Violations counts every violation.
func (r *Report) Violations() int {
	n := 0
	for _, res := range r.Results {
		n += len(res.Violations)
	}
	return n
}

// MissingFaultKinds lists the kinds never injected.
func (r *Report) MissingFaultKinds() []FaultKind {
	var out []FaultKind
	for _, k := range AllFaultKinds {
		if r.Faults[k] == 0 {
			out = append(out, k)
		}
	}
	return out
}

// WriteTable prints the summary table and the first violation of each
// checker.
func (r *Report) WriteTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 2, 0, 2, ' ', 0)
	seeds := make([]string, len(r.Seeds))
	for i, s := range r.Seeds {
		seeds[i] = fmt.Sprint(s)
	}
	total := 0
	for _, n := range r.Ops {
		total += n
	}
	fmt.Fprintf(tw, "seeds\t%s\n", strings.Join(seeds, ","))
	fmt.Fprintf(tw, "workload time\t%s\n", r.Duration.Round(time.Millisecond))
	fmt.Fprintf(tw, "operations\t%d\n", total)
	for _, k := range []Kind{KindPut, KindPatch, KindDelete, KindBatch, KindGetAPI, KindGetRedis} {
		fmt.Fprintf(tw, "  %s\t%d\n", k, r.Ops[k])
	}
	fmt.Fprintf(tw, "  writes with unknown outcome\t%d\n", r.Unknown)
	fmt.Fprintf(tw, "  writes answered pending\t%d\n", r.Pending)
	fmt.Fprintf(tw, "  answers 5xx other than 503\t%d\n", r.ServerErrors)
	fmt.Fprintf(tw, "events on the stream\t%d\n", r.Events)
	nf := 0
	for _, n := range r.Faults {
		nf += n
	}
	fmt.Fprintf(tw, "faults\t%d\n", nf)
	for _, k := range AllFaultKinds {
		fmt.Fprintf(tw, "  %s\t%d\n", k, r.Faults[k])
	}
	fmt.Fprintf(tw, "unexpected service exits\t%d\n", r.UnexpectedExits)
	fmt.Fprintf(tw, "violations\t%d\n", r.Violations())
	for _, name := range Checkers {
		res, ok := r.Results[name]
		if !ok {
			fmt.Fprintf(tw, "  %s\tnot run\n", name)
			continue
		}
		line := fmt.Sprintf("  %s\t%d\t(checked %d", name, len(res.Violations), res.Checked)
		if res.Note != "" {
			line += "; " + res.Note
		}
		fmt.Fprintln(tw, line+")")
	}
	fmt.Fprintf(tw, "convergence p99 / max\t%s / %s\t(%d keys, %d of them diverged when the workload stopped)\n",
		Percentile(r.ConvTimes, 99).Round(time.Millisecond), Percentile(r.ConvTimes, 100).Round(time.Millisecond), len(r.ConvTimes), r.ConvRepaired)
	tw.Flush()
	for _, name := range Checkers {
		res, ok := r.Results[name]
		if !ok || len(res.Violations) == 0 {
			continue
		}
		fmt.Fprintf(w, "first %s violation (of %d):\n  %s\n", name, len(res.Violations), res.First())
		for i, v := range res.Violations[1:min(len(res.Violations), 5)] {
			fmt.Fprintf(w, "  %s violation %d:\n  %s\n", name, i+2, v)
		}
	}
}

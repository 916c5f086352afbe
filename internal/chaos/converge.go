package chaos

import (
	"fmt"
	"sort"
	"time"
)

// Divergence returns why a key's Redis hash differs from its Postgres row,
// or "" when it matches or is absent (CONTRACT §4: the cache may miss, never
// lie).
func Divergence(row Row, inPG bool, c Cached, inRedis bool) string {
	switch {
	case !inRedis:
		return ""
	case !inPG:
		return fmt.Sprintf("redis holds v%d but Postgres has no row", c.Version)
	case c.Version != row.Version:
		return fmt.Sprintf("redis v%d, postgres v%d", c.Version, row.Version)
	case c.Deleted != row.Deleted:
		return fmt.Sprintf("v%d: redis deleted=%t, postgres deleted=%t", c.Version, c.Deleted, row.Deleted)
	case c.Data != row.Data:
		return fmt.Sprintf("v%d: redis d=%s, postgres data=%s", c.Version, c.Data, row.Data)
	case c.UpdatedAt != row.UpdatedAt:
		return fmt.Sprintf("v%d: redis u=%s, postgres updated_at=%s", c.Version, c.UpdatedAt, row.UpdatedAt)
	}
	return ""
}

// Divergences compares every key present in either map.
func Divergences(pg map[string]Row, redis map[string]Cached) map[string]string {
	out := map[string]string{}
	for k, c := range redis {
		r, ok := pg[k]
		if d := Divergence(r, ok, c, true); d != "" {
			out[k] = d
		}
	}
	return out
}

// Convergence is what the runner measured after the last fault healed and
// the workload stopped: for each key, how long until Redis first matched
// Postgres (and kept matching), and what still diverged at the deadline.
type Convergence struct {
	// From is when the clock started: the later of the last heal and the
	// end of the workload.
	From time.Duration
	// Times holds each key's time to converge.
	Times map[string]time.Duration
	// Diverged holds the keys that never converged before the deadline.
	Diverged map[string]string
	// Bound is the promise checked, default RepairWindow.
	Bound time.Duration
	// AtStart counts the keys that diverged at the first look: the ones
	// whose repair the clock actually measured.
	AtStart int
}

// Percentile returns the p-th percentile (0 < p ≤ 100) of ds, 0 if empty.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s))*p/100+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// CheckConvergence reports every key that did not converge within the bound.
func CheckConvergence(c Convergence) Result {
	bound := c.Bound
	if bound == 0 {
		bound = RepairWindow
	}
	var vs []Violation
	for k, d := range c.Diverged {
		vs = append(vs, Violation{Checker: NameConvergence, Key: k, At: int64(c.From), Msg: "never converged: " + d})
	}
	for k, t := range c.Times {
		if t > bound {
			vs = append(vs, Violation{Checker: NameConvergence, Key: k, At: int64(c.From + t),
				Msg: fmt.Sprintf("converged only after %s (bound %s)", t.Round(time.Millisecond), bound)})
		}
	}
	sort.Slice(vs, func(i, j int) bool { return vs[i].Key < vs[j].Key })
	return finish(NameConvergence, len(c.Times)+len(c.Diverged), vs)
}

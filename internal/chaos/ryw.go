package chaos

import "fmt"

// CheckReadYourAckedWrite checks CONTRACT §4: after a write answered
// `X-Cache-Write: ok` with version V, every read that starts later, API or
// direct Redis, sees V or newer, or a miss.
//
// No window is exempt. The contract's allowed window covers writes answered
// `pending`, which this checker ignores, and API reads served from Postgres,
// which can only be newer than any acknowledged write. A read that sees an
// older version after an `ok` — even after Redis was restarted empty — means
// a stale write landed in the cache.
func CheckReadYourAckedWrite(h *History) Result {
	writes := map[string][]*Op{}
	ack := map[*Op]map[string]Item{}
	for i := range h.Ops {
		op := &h.Ops[i]
		if !op.Kind.IsWrite() || !op.OK() || op.CacheWrite != CacheOK {
			continue
		}
		fin := op.Final()
		ack[op] = fin
		for k := range fin {
			writes[k] = append(writes[k], op)
		}
	}
	var vs []Violation
	checked := 0
	for key, reads := range keyReads(h.Ops) {
		ws := sortedBy(writes[key], func(o *Op) int64 { return o.Complete })
		var (
			best *Op
			next int
		)
		for _, r := range sortedBy(reads, func(o *Op) int64 { return o.Invoke }) {
			for ; next < len(ws) && ws[next].Complete < r.Invoke; next++ {
				if best == nil || ack[ws[next]][key].Version > ack[best][key].Version {
					best = ws[next]
				}
			}
			checked++
			if v := seen(r); v != 0 && best != nil && v < ack[best][key].Version {
				vs = append(vs, Violation{
					Checker: NameRYW, Key: key, At: r.Invoke,
					Msg: fmt.Sprintf("read saw version %d after a write of version %d was answered X-Cache-Write: ok", v, ack[best][key].Version),
					Ops: []Op{*best, *r},
				})
				break
			}
		}
	}
	return finish(NameRYW, checked, vs)
}

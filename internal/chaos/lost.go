package chaos

import "fmt"

// CheckNothingLost checks that every write answered 2xx is durable: each
// version it reports was committed (the outbox holds it, with the same data)
// and the entity's current row is at that version or a later one.
func CheckNothingLost(h *History, committed []Change, rows map[string]Row) Result {
	type kv struct {
		key string
		v   int64
	}
	byVersion := make(map[kv]Change, len(committed))
	for _, c := range committed {
		byVersion[kv{c.Key, c.Version}] = c
	}
	var vs []Violation
	checked := 0
	for i := range h.Ops {
		op := &h.Ops[i]
		if !op.Kind.IsWrite() || !op.OK() {
			continue
		}
		for _, it := range op.Items {
			checked++
			c, ok := byVersion[kv{it.Key, it.Version}]
			var msg string
			switch row, inPG := rows[it.Key]; {
			case !ok:
				msg = fmt.Sprintf("acknowledged v%d is not among the committed changes", it.Version)
			case c.Deleted != it.Deleted || (!it.Deleted && c.Data != it.Data):
				msg = fmt.Sprintf("acknowledged v%d (deleted=%t, data %s) but committed deleted=%t, data %s", it.Version, it.Deleted, it.Data, c.Deleted, c.Data)
			case !inPG:
				msg = fmt.Sprintf("acknowledged v%d but the entity has no row", it.Version)
			case row.Version < it.Version:
				msg = fmt.Sprintf("acknowledged v%d but the row is at v%d", it.Version, row.Version)
			default:
				continue
			}
			vs = append(vs, Violation{Checker: NameLost, Key: it.Key, At: op.Complete, Msg: msg, Ops: []Op{*op}})
			break
		}
	}
	return finish(NameLost, checked, vs)
}

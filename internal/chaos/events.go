package chaos

import "fmt"

// CheckEvents compares the stream with the committed changes (CONTRACT §5):
//
//   - every committed change has exactly one distinct ce-id on the stream,
//     its own, with the right subject, type, version, time and body (the same
//     ce-id may repeat: delivery is at least once and consumers dedupe);
//   - per key, the versions on the stream, taken at each ce-id's first
//     appearance, strictly increase with no gap among committed versions;
//   - nothing is on the stream that was not committed.
func CheckEvents(committed []Change, stream []Event, subjectPrefix string) Result {
	var vs []Violation
	byID := make(map[string]Change, len(committed))
	type kv struct {
		key string
		v   int64
	}
	for _, c := range committed {
		byID[c.EventID] = c
	}
	at := func(e Event) int64 { return int64(e.StreamSeq) }
	bad := func(e Event, key, format string, args ...any) {
		vs = append(vs, Violation{Checker: NameEvents, Key: key, At: at(e),
			Msg: fmt.Sprintf("stream seq %d (ce-id %s): ", e.StreamSeq, e.ID) + fmt.Sprintf(format, args...)})
	}
	firstSeen := map[string]Event{}
	idsOf := map[kv]map[string]bool{}
	order := map[string][]Event{} // per key, first appearances in stream order
	for _, e := range stream {
		if e.Problem != "" {
			bad(e, e.Key, "malformed: %s", e.Problem)
			continue
		}
		if ids := idsOf[kv{e.Key, e.Version}]; ids == nil {
			idsOf[kv{e.Key, e.Version}] = map[string]bool{e.ID: true}
		} else {
			ids[e.ID] = true
		}
		if _, dup := firstSeen[e.ID]; dup {
			continue
		}
		firstSeen[e.ID] = e
		c, ok := byID[e.ID]
		if !ok {
			bad(e, e.Key, "v%d was never committed with this ce-id", e.Version)
			continue
		}
		order[c.Key] = append(order[c.Key], e)
		if d := eventMismatch(c, e, subjectPrefix); d != "" {
			bad(e, c.Key, "v%d: %s", c.Version, d)
		}
	}
	for k, ids := range idsOf {
		if len(ids) > 1 {
			vs = append(vs, Violation{Checker: NameEvents, Key: k.key,
				Msg: fmt.Sprintf("v%d has %d distinct ce-ids on the stream", k.v, len(ids))})
		}
	}
	for _, c := range committed {
		if _, ok := firstSeen[c.EventID]; !ok {
			vs = append(vs, Violation{Checker: NameEvents, Key: c.Key, At: 1 << 62,
				Msg: fmt.Sprintf("committed v%d (ce-id %s) is not on the stream", c.Version, c.EventID)})
		}
	}
	// Order: per key, first appearances strictly increase. With every
	// committed version present (checked above) that also rules out gaps.
	for key, evs := range order {
		for i := 1; i < len(evs); i++ {
			if evs[i].Version <= evs[i-1].Version {
				bad(evs[i], key, "v%d arrives after v%d", evs[i].Version, evs[i-1].Version)
				break
			}
		}
	}
	return finish(NameEvents, len(stream), vs)
}

// eventMismatch checks one event against its committed change.
func eventMismatch(c Change, e Event, subjectPrefix string) string {
	op, typ := "put", "writethrough.entity.put"
	if c.Deleted {
		op, typ = "delete", "writethrough.entity.delete"
	}
	coll := c.Key
	for i := 0; i < len(c.Key); i++ {
		if c.Key[i] == '/' {
			coll = c.Key[:i]
			break
		}
	}
	switch {
	case e.Key != c.Key:
		return fmt.Sprintf("ce-subject %q, committed for %q", e.Key, c.Key)
	case e.Version != c.Version:
		return fmt.Sprintf("ce-entityversion %d, committed %d", e.Version, c.Version)
	case e.Subject != subjectPrefix+"."+coll+"."+op:
		return fmt.Sprintf("subject %q, want %q", e.Subject, subjectPrefix+"."+coll+"."+op)
	case e.Type != typ:
		return fmt.Sprintf("ce-type %q, want %q", e.Type, typ)
	case e.Deleted != c.Deleted:
		return fmt.Sprintf("deleted=%t, committed deleted=%t", e.Deleted, c.Deleted)
	case e.Data != c.Data:
		return fmt.Sprintf("data %s, committed %s", e.Data, c.Data)
	case e.Time != c.CommittedAt:
		return fmt.Sprintf("ce-time %s, committed %s", e.Time, c.CommittedAt)
	}
	return ""
}

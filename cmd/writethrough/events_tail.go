package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/writethrough/writethrough/internal/cloudevent"
)

func init() {
	register("events tail", "print change events from the stream as they arrive", eventsTail)
}

// tailedEvent is one line of `events tail --json`.
type tailedEvent struct {
	StreamSeq     uint64 `json:"stream_seq"`
	Subject       string `json:"subject"`
	ID            string `json:"id"`
	Source        string `json:"source"`
	Type          string `json:"type"`
	EntitySubject string `json:"entity_subject"`
	Collection    string `json:"collection"`
	EntityID      string `json:"entity_id"`
	Time          string `json:"time"`
	EntityVersion int64  `json:"entity_version"`
	Traceparent   string `json:"traceparent,omitempty"`
	Replay        bool   `json:"replay,omitempty"`
	ReplayID      string `json:"replay_id,omitempty"`
	// Data is the event body, the entity representation, printed byte for
	// byte as published (appendTailed writes it).
	Data json.RawMessage `json:"data"`
}

// appendTailed appends te as one line of JSON. The body goes in verbatim:
// encoding/json would compact it, losing the spaces of Postgres's jsonb
// text, and escape <, > and &.
func appendTailed(b []byte, te *tailedEvent) ([]byte, error) {
	head := *te
	head.Data = nil
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(head); err != nil {
		return b, err
	}
	// The encoded head ends in `"data":null}` and a newline.
	const tail = `"data":null}` + "\n"
	line, ok := bytes.CutSuffix(buf.Bytes(), []byte(tail))
	if !ok {
		return b, errors.New("encode event: data is not the last field")
	}
	b = append(b, line...)
	b = append(b, `"data":`...)
	b = append(b, te.Data...)
	return append(b, "}\n"...), nil
}

// entityKey is the collection and id of an event's entity. They come from
// the body, the entity representation, which is exact: ce-subject is not,
// since NATS trims the blanks around a header value (an id "a " arrives as
// "users/a").
type entityKey struct {
	Collection string  `json:"collection"`
	ID         *string `json:"id"`
}

// keyOf reads the entity of ev from its body, falling back to ce-subject
// when the body names no id.
func keyOf(ev *cloudevent.Event) (collection, id string) {
	var k entityKey
	if json.Unmarshal(ev.Data, &k) == nil && k.ID != nil {
		return cmp.Or(k.Collection, ev.Collection()), *k.ID
	}
	return ev.Collection(), ev.EntityID()
}

// entityLabel is "collection/id", the id quoted when blanks around it or
// characters that do not print would otherwise hide what it is.
func entityLabel(collection, id string) string {
	if id == "" || strings.TrimSpace(id) != id || strings.IndexFunc(id, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		id = strconv.Quote(id)
	}
	return collection + "/" + id
}

func eventsTail(ctx context.Context, c *cli, args []string) int {
	const name = "events tail"
	fs := c.flags(name)
	collection := fs.String("collection", "", "only events of this collection")
	typ := fs.String("type", "", "only put or delete events")
	key := fs.String("key", "", "only events of this entity id (needs --collection)")
	sinceSeq := fs.Uint64("since-seq", 0, "start at this stream sequence")
	since := fs.String("since", "", "start at this RFC 3339 time (default: from now)")
	limit := fs.Int("limit", 0, "exit after printing this many events (default: until interrupted)")
	asJSON := fs.Bool("json", false, "print one JSON event per line")
	cfg, code := c.parse(fs, args)
	if cfg == nil {
		return code
	}
	if !c.validCollection(name, *collection) {
		return exitUsage
	}
	if *typ != "" && *typ != "put" && *typ != "delete" {
		fmt.Fprintf(c.stderr, "writethrough %s: --type must be put or delete, got %q\n", name, *typ)
		return exitUsage
	}
	if *key != "" && *collection == "" {
		fmt.Fprintf(c.stderr, "writethrough %s: --key needs --collection\n", name)
		return exitUsage
	}
	if *sinceSeq > 0 && *since != "" {
		fmt.Fprintf(c.stderr, "writethrough %s: use --since-seq or --since, not both\n", name)
		return exitUsage
	}
	start, ok := c.parseTime(name, "since", *since)
	if !ok {
		return exitUsage
	}
	if *limit < 0 {
		fmt.Fprintf(c.stderr, "writethrough %s: --limit must not be negative\n", name)
		return exitUsage
	}

	oc := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy}
	switch {
	case *sinceSeq > 0:
		oc.DeliverPolicy, oc.OptStartSeq = jetstream.DeliverByStartSequencePolicy, *sinceSeq
	case !start.IsZero():
		oc.DeliverPolicy, oc.OptStartTime = jetstream.DeliverByStartTimePolicy, &start
	}
	coll, op := "*", "*"
	if *collection != "" {
		coll = *collection
	}
	if *typ != "" {
		op = *typ
	}
	oc.FilterSubjects = []string{cfg.SubjectPrefix + "." + coll + "." + op}

	// No Postgres or Redis needed: only NATS.
	d := &deps{cfg: cfg}
	if err := d.connectNATS(); err != nil {
		return c.fail("%s: %v", name, err)
	}
	defer d.close()
	js, err := jetstream.New(d.nc)
	if err != nil {
		return c.fail("%s: jetstream: %v", name, err)
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	cons, err := js.OrderedConsumer(sctx, cfg.Stream, oc)
	cancel()
	if err != nil {
		return c.fail("%s: stream %s (WT_NATS_STREAM): %v", name, cfg.Stream, redact(err))
	}
	it, err := cons.Messages()
	if err != nil {
		return c.fail("%s: %v", name, err)
	}
	defer it.Stop()
	go func() {
		<-ctx.Done()
		it.Stop()
	}()
	printed := 0
	var line []byte
	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return exitOK
			}
			return c.fail("%s: %v", name, err)
		}
		ev, err := cloudevent.Decode(&nats.Msg{Subject: msg.Subject(), Header: msg.Headers(), Data: msg.Data()})
		if err != nil {
			fmt.Fprintf(c.stderr, "writethrough %s: skipping a message on %s: %v\n", name, msg.Subject(), err)
			continue
		}
		if !json.Valid(ev.Data) {
			fmt.Fprintf(c.stderr, "writethrough %s: skipping a message on %s: its body is not JSON\n", name, msg.Subject())
			continue
		}
		coll, id := keyOf(ev)
		if *key != "" && (coll != *collection || id != *key) {
			continue
		}
		var seq uint64
		if md, err := msg.Metadata(); err == nil {
			seq = md.Sequence.Stream
		}
		te := tailedEvent{
			StreamSeq: seq, Subject: ev.Subject, ID: ev.ID, Source: ev.Source, Type: ev.Type,
			EntitySubject: ev.EntitySubject, Collection: coll, EntityID: id, Time: ev.Time, EntityVersion: ev.EntityVersion,
			Traceparent: ev.Traceparent, Replay: msg.Headers().Get(headerReplay) == "true",
			ReplayID: msg.Headers().Get(headerReplayID), Data: json.RawMessage(ev.Data),
		}
		if *asJSON {
			line, err = appendTailed(line[:0], &te)
			if err != nil {
				return c.fail("%s: %v", name, err)
			}
			if _, err := c.stdout.Write(line); err != nil {
				return exitOK // the reader went away (a closed pipe)
			}
		} else {
			op := "put"
			if ev.Deleted() {
				op = "delete"
			}
			replay := ""
			if te.Replay {
				replay = "  (replay " + te.ReplayID + ")"
			}
			if _, err := fmt.Fprintf(c.stdout, "#%d %s %-6s %s v%d id=%s%s\n", seq, ev.Time, op, entityLabel(coll, id), ev.EntityVersion, ev.ID, replay); err != nil {
				return exitOK
			}
		}
		printed++
		if *limit > 0 && printed >= *limit {
			return exitOK
		}
	}
}

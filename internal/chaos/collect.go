package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/writethrough/writethrough/outbox"
)

// What the checkers compare with the history is read straight from the
// servers, never through the proxies.

func loadCommitted(ctx context.Context, pool *pgxpool.Pool) ([]Change, error) {
	rows, err := pool.Query(ctx, `SELECT event_id::text, collection, entity_id, version, op, data::text, committed_at FROM outbox ORDER BY seq`)
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	defer rows.Close()
	var out []Change
	for rows.Next() {
		var (
			c         Change
			coll, id  string
			op        string
			data      *string
			committed time.Time
		)
		if err := rows.Scan(&c.EventID, &coll, &id, &c.Version, &op, &data, &committed); err != nil {
			return nil, err
		}
		c.Key, c.Deleted, c.CommittedAt = coll+"/"+id, op == "delete", outbox.FormatTime(committed)
		if data != nil {
			c.Data = *data
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

func loadRows(ctx context.Context, pool *pgxpool.Pool) (map[string]Row, error) {
	rows, err := pool.Query(ctx, `SELECT collection, id, version, deleted, data::text, updated_at FROM entities`)
	if err != nil {
		return nil, fmt.Errorf("read entities: %w", err)
	}
	defer rows.Close()
	out := map[string]Row{}
	for rows.Next() {
		var (
			r        Row
			coll, id string
			data     *string
			updated  time.Time
		)
		if err := rows.Scan(&coll, &id, &r.Version, &r.Deleted, &data, &updated); err != nil {
			return nil, err
		}
		r.UpdatedAt = outbox.FormatTime(updated)
		if data != nil {
			r.Data = *data
		}
		out[coll+"/"+id] = r
	}
	return out, rows.Err()
}

// loadCache reads the hash of each key ("collection/id").
func loadCache(ctx context.Context, rdb *redis.Client, prefix string, keys []string) (map[string]Cached, error) {
	cmds := make([]*redis.SliceCmd, len(keys))
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			coll, id, _ := strings.Cut(k, "/")
			cmds[i] = p.HMGet(ctx, prefix+coll+":"+id, "v", "d", "u")
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read cache: %w", err)
	}
	out := map[string]Cached{}
	for i, c := range cmds {
		v, ok, err := parseCached(c.Val())
		if err != nil {
			return nil, err
		}
		if ok {
			out[keys[i]] = v
		}
	}
	return out, nil
}

// waitPublished waits until the outbox holds nothing left to publish.
func waitPublished(ctx context.Context, pool *pgxpool.Pool, d time.Duration) (pending int, err error) {
	deadline := time.Now().Add(d)
	for {
		err = pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE publish_state <> 'done'`).Scan(&pending)
		if err != nil || pending == 0 || time.Now().After(deadline) {
			return pending, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// readStream returns every message of the stream, in stream order.
func readStream(ctx context.Context, natsURL, stream string) ([]Event, error) {
	nc, err := nats.Connect(natsURL)
	if err != nil {
		return nil, fmt.Errorf("connect NATS: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	s, err := js.Stream(ctx, stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, err
	}
	var out []Event
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && seq > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("stream message %d: %w", seq, err)
		}
		out = append(out, parseEvent(m))
	}
	return out, nil
}

// parseEvent reads a CloudEvent in the binary content mode (CONTRACT §5).
func parseEvent(m *jetstream.RawStreamMsg) Event {
	h := m.Header
	e := Event{
		StreamSeq: m.Sequence, Subject: m.Subject,
		ID: h.Get("ce-id"), Type: h.Get("ce-type"), Time: h.Get("ce-time"),
	}
	var problems []string
	if h.Get("ce-specversion") != "1.0" {
		problems = append(problems, "ce-specversion "+h.Get("ce-specversion"))
	}
	if e.ID == "" || h.Get("Nats-Msg-Id") != e.ID {
		problems = append(problems, fmt.Sprintf("ce-id %q, Nats-Msg-Id %q", e.ID, h.Get("Nats-Msg-Id")))
	}
	if ct := h.Get("content-type"); ct != "application/json" {
		problems = append(problems, "content-type "+ct)
	}
	e.Key = h.Get("ce-subject")
	v, err := strconv.ParseInt(h.Get("ce-entityversion"), 10, 64)
	if err != nil {
		problems = append(problems, "ce-entityversion "+h.Get("ce-entityversion"))
	}
	e.Version = v
	var body entity
	if err := json.Unmarshal(m.Data, &body); err != nil {
		problems = append(problems, "body: "+err.Error())
	} else {
		e.Deleted = body.Deleted
		if !body.Deleted {
			e.Data = string(body.Data)
		}
		switch {
		case body.Collection+"/"+body.ID != e.Key:
			problems = append(problems, fmt.Sprintf("body is %s/%s, ce-subject %s", body.Collection, body.ID, e.Key))
		case body.Version != v:
			problems = append(problems, fmt.Sprintf("body version %d, ce-entityversion %d", body.Version, v))
		case body.UpdatedAt != e.Time:
			problems = append(problems, fmt.Sprintf("body updated_at %s, ce-time %s", body.UpdatedAt, e.Time))
		case body.Deleted && string(body.Data) != "null":
			problems = append(problems, "deleted with data")
		}
	}
	e.Problem = strings.Join(problems, "; ")
	return e
}

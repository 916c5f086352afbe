package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// workload is the set of clients: writers over the HTTP API (put, patch,
// delete, batch, and some reads), API readers, and readers of Redis itself.
type workload struct {
	h          *History
	base       string // http://host:port
	http       *http.Client
	rdb        *redis.Client // the private Redis, read directly
	prefix     string        // WT_REDIS_PREFIX
	collection string
	ids        []string
	seed       int64
}

// Keys returns the keys the workload touches, as "collection/id".
func (w *workload) Keys() []string {
	out := make([]string, len(w.ids))
	for i, id := range w.ids {
		out[i] = w.collection + "/" + id
	}
	return out
}

// run starts the clients and blocks until ctx ends.
func (w *workload) run(ctx context.Context, writers, readers, redisReaders int) {
	var wg sync.WaitGroup
	client := 0
	for range writers {
		c := client
		client++
		wg.Go(func() { w.loop(ctx, c, w.writeOp) })
	}
	for range readers {
		c := client
		client++
		wg.Go(func() { w.loop(ctx, c, w.getAPI) })
	}
	for range redisReaders {
		c := client
		client++
		wg.Go(func() { w.loop(ctx, c, w.getRedis) })
	}
	wg.Wait()
}

func (w *workload) loop(ctx context.Context, client int, step func(context.Context, *rand.Rand, int) Op) {
	rng := rand.New(rand.NewPCG(uint64(w.seed), uint64(client)+1))
	for ctx.Err() == nil {
		op := step(ctx, rng, client)
		if ctx.Err() != nil && op.Status == 0 {
			return // cut short by the end of the run, not by a fault
		}
		op.Client = client
		w.h.Record(op)
		// A little think time keeps two shared cores usable.
		time.Sleep(time.Duration(500+rng.IntN(2500)) * time.Microsecond)
	}
}

func (w *workload) id(rng *rand.Rand) string { return w.ids[rng.IntN(len(w.ids))] }

func (w *workload) url(id string) string {
	return w.base + "/v1/" + w.collection + "/" + url.PathEscape(id)
}

func (w *workload) writeOp(ctx context.Context, rng *rand.Rand, client int) Op {
	id := w.id(rng)
	n := rng.Int64()
	switch p := rng.IntN(100); {
	case p < 40:
		body := fmt.Sprintf(`{"client":%d,"n":%d}`, client, n)
		return w.call(ctx, KindPut, http.MethodPut, w.url(id), "application/json", body, id)
	case p < 60:
		body := fmt.Sprintf(`{"p":%d}`, n)
		return w.call(ctx, KindPatch, http.MethodPatch, w.url(id), "application/merge-patch+json", body, id)
	case p < 72:
		return w.call(ctx, KindDelete, http.MethodDelete, w.url(id), "", "", id)
	case p < 85:
		return w.batch(ctx, rng, client)
	default:
		return w.getAPI(ctx, rng, client)
	}
}

func (w *workload) batch(ctx context.Context, rng *rand.Rand, client int) Op {
	var ops []string
	for i := range 2 + rng.IntN(3) {
		id := w.id(rng)
		idJSON, _ := json.Marshal(id)
		switch rng.IntN(5) {
		case 0:
			ops = append(ops, fmt.Sprintf(`{"op":"delete","collection":%q,"id":%s}`, w.collection, idJSON))
		case 1:
			ops = append(ops, fmt.Sprintf(`{"op":"patch","collection":%q,"id":%s,"data":{"b":%d}}`, w.collection, idJSON, i))
		default:
			ops = append(ops, fmt.Sprintf(`{"op":"put","collection":%q,"id":%s,"data":{"client":%d,"batch":%d}}`, w.collection, idJSON, client, rng.Int64()))
		}
	}
	body := `{"ops":[` + strings.Join(ops, ",") + `]}`
	return w.call(ctx, KindBatch, http.MethodPost, w.base+"/v1/_batch", "application/json", body, "")
}

func (w *workload) getAPI(ctx context.Context, rng *rand.Rand, _ int) Op {
	id := w.id(rng)
	return w.call(ctx, KindGetAPI, http.MethodGet, w.url(id), "", "", id)
}

// entity is the entity representation, and a batch's deleted result.
type entity struct {
	Collection string          `json:"collection"`
	ID         string          `json:"id"`
	Version    int64           `json:"version"`
	Data       json.RawMessage `json:"data"`
	Deleted    bool            `json:"deleted"`
	UpdatedAt  string          `json:"updated_at"`
}

func (e entity) item() Item {
	it := Item{Key: e.Collection + "/" + e.ID, Version: e.Version, Deleted: e.Deleted}
	if !e.Deleted {
		it.Data = string(e.Data)
	}
	return it
}

func (w *workload) call(ctx context.Context, kind Kind, method, target, ctype, body, id string) Op {
	op := Op{Kind: kind}
	key := w.collection + "/" + id
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		panic(err) // the workload builds its own requests
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	op.Invoke = w.h.Now()
	resp, err := w.http.Do(req)
	var b []byte
	if err == nil {
		b, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	op.Complete = w.h.Now()
	if err != nil {
		op.Err = err.Error()
		if id != "" {
			op.Items = []Item{{Key: key}}
		}
		return op
	}
	op.Status = resp.StatusCode
	op.CacheWrite = resp.Header.Get("X-Cache-Write")
	if kind == KindGetAPI {
		op.Source = resp.Header.Get("X-Cache")
	}
	switch {
	case op.Status == http.StatusNoContent: // DELETE: the tombstone's version is in the ETag
		v, perr := strconv.ParseInt(strings.Trim(resp.Header.Get("ETag"), `"`), 10, 64)
		if perr != nil {
			op.Err = "204 without a version ETag"
		}
		op.Items = []Item{{Key: key, Version: v, Deleted: true}}
	case op.Status == http.StatusOK && kind == KindBatch:
		var res struct {
			Results []entity `json:"results"`
		}
		if err := json.Unmarshal(b, &res); err != nil {
			op.Err = "batch response: " + err.Error()
		}
		for _, e := range res.Results {
			op.Items = append(op.Items, e.item())
		}
	case op.Status == http.StatusOK || op.Status == http.StatusCreated:
		var e entity
		if err := json.Unmarshal(b, &e); err != nil {
			op.Err = "entity response: " + err.Error()
		}
		op.Items = []Item{e.item()}
	default:
		if id != "" {
			op.Items = []Item{{Key: key}}
		}
		if op.Status >= 400 && op.Status != http.StatusNotFound {
			op.Err = string(bytes.TrimSpace(b))
		}
	}
	return op
}

func (w *workload) getRedis(ctx context.Context, rng *rand.Rand, _ int) Op {
	id := w.id(rng)
	op := Op{Kind: KindGetRedis, Source: SourceRedis}
	it := Item{Key: w.collection + "/" + id}
	op.Invoke = w.h.Now()
	vals, err := w.rdb.HMGet(ctx, w.prefix+w.collection+":"+id, "v", "d", "u").Result()
	op.Complete = w.h.Now()
	if err != nil {
		op.Err = err.Error()
		op.Items = []Item{it}
		return op
	}
	op.Status = http.StatusOK
	c, ok, perr := parseCached(vals)
	if perr != nil {
		op.Err = perr.Error()
	}
	if ok {
		it.Version, it.Deleted, it.Data = c.Version, c.Deleted, c.Data
	}
	op.Items = []Item{it}
	return op
}

// parseCached reads HMGET v d u.
func parseCached(vals []any) (Cached, bool, error) {
	if len(vals) != 3 || vals[0] == nil {
		return Cached{}, false, nil
	}
	vs, _ := vals[0].(string)
	v, err := strconv.ParseInt(vs, 10, 64)
	if err != nil {
		return Cached{}, false, fmt.Errorf("cache hash has a bad version %q", vs)
	}
	c := Cached{Version: v}
	if d, ok := vals[1].(string); ok {
		c.Data = d
	} else {
		c.Deleted = true
	}
	c.UpdatedAt, _ = vals[2].(string)
	return c, true, nil
}

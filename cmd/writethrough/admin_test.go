package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/internal/cloudevent"
	"github.com/writethrough/writethrough/internal/testenv"
	"github.com/writethrough/writethrough/outbox"
	"github.com/writethrough/writethrough/writer"
)

// adminBundle is one test's services, a writer and the command environment.
type adminBundle struct {
	env  *testenv.Env
	w    *writer.Writer
	vars map[string]string
}

func setupAdmin(t *testing.T) *adminBundle {
	t.Helper()
	env := testenv.New(t)
	w, err := writer.New(writer.Config{Pool: env.Pool, Fence: env.Fence})
	require.NoError(t, err)
	t.Cleanup(w.Close)
	return &adminBundle{env: env, w: w, vars: map[string]string{
		"DATABASE_URL":           env.DatabaseURL,
		"WT_DB_SCHEMA":           env.Schema,
		"REDIS_URL":              env.RedisURL,
		"WT_REDIS_PREFIX":        env.Prefix,
		"NATS_URL":               env.NATSURL,
		"WT_NATS_STREAM":         env.Stream,
		"WT_NATS_SUBJECT_PREFIX": env.SubjectPrefix,
		"WT_LOG_LEVEL":           "warn",
	}}
}

// cmd runs the command line and returns its exit status and output.
func (b *adminBundle) cmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return b.cmdCtx(t, context.Background(), args...)
}

func (b *adminBundle) cmdCtx(t *testing.T, ctx context.Context, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(ctx, args, func(k string) string { return b.vars[k] }, &out, &errOut)
	return code, out.String(), errOut.String()
}

// jsonCmd runs a --json command that must succeed and decodes its output.
func (b *adminBundle) jsonCmd(t *testing.T, v any, args ...string) {
	t.Helper()
	code, out, errOut := b.cmd(t, append(args, "--json")...)
	require.Equal(t, exitOK, code, "stderr: %s", errOut)
	require.NoError(t, json.Unmarshal([]byte(out), v), out)
}

func (b *adminBundle) put(t *testing.T, collection, id, data string) writer.Change {
	t.Helper()
	res, err := b.w.Do(context.Background(), func(tx writer.Tx) error {
		_, err := tx.Put(context.Background(), collection, id, []byte(data))
		return err
	})
	require.NoError(t, err)
	return res.Changes[0]
}

func (b *adminBundle) del(t *testing.T, collection, id string) writer.Change {
	t.Helper()
	res, err := b.w.Do(context.Background(), func(tx writer.Tx) error {
		_, err := tx.Delete(context.Background(), collection, id)
		return err
	})
	require.NoError(t, err)
	return res.Changes[0]
}

func (b *adminBundle) exec(t *testing.T, sql string, args ...any) int64 {
	t.Helper()
	tag, err := b.env.Pool.Exec(context.Background(), sql, args...)
	require.NoError(t, err)
	return tag.RowsAffected()
}

func TestOutboxDeadListAndRetry(t *testing.T) {
	t.Parallel()
	b := setupAdmin(t)
	for i := range 5 {
		b.put(t, "users", fmt.Sprint(i), `{"n": 1}`)
	}
	b.put(t, "orders", "9", `{}`)
	// Seed dead letters: two keys of users with one error, orders with another.
	require.EqualValues(t, 2, b.exec(t, `UPDATE outbox SET publish_state = 'dead', attempts = 8, dead_at = now(), last_error = 'nats: maximum payload exceeded' WHERE collection = 'users' AND entity_id IN ('1', '3')`))
	require.EqualValues(t, 1, b.exec(t, `UPDATE outbox SET publish_state = 'dead', attempts = 8, dead_at = now(), last_error = 'stream not found' WHERE collection = 'orders'`))

	var list struct {
		Total int64               `json:"total"`
		Dead  []outbox.DeadLetter `json:"dead"`
	}
	b.jsonCmd(t, &list, "outbox", "dead", "list")
	require.EqualValues(t, 3, list.Total)
	require.Len(t, list.Dead, 3)
	b.jsonCmd(t, &list, "outbox", "dead", "list", "--error", "PAYLOAD")
	require.EqualValues(t, 2, list.Total)
	for _, d := range list.Dead {
		require.Equal(t, "users", d.Collection)
		require.Contains(t, d.LastError, "payload")
	}
	b.jsonCmd(t, &list, "outbox", "dead", "list", "--collection", "users", "--key", "3")
	require.Len(t, list.Dead, 1)
	require.Equal(t, "3", list.Dead[0].EntityID)
	b.jsonCmd(t, &list, "outbox", "dead", "list", "--since", time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	require.Zero(t, list.Total)

	code, out, _ := b.cmd(t, "outbox", "dead", "list")
	require.Equal(t, exitOK, code)
	require.Contains(t, out, "users/1")
	require.Contains(t, out, "3 dead letters")

	var st struct {
		Dead    int64 `json:"dead"`
		Pending int64 `json:"pending"`
	}
	b.jsonCmd(t, &st, "outbox", "status")
	require.EqualValues(t, 3, st.Dead)

	// Retry one key, then the rest.
	code, out, _ = b.cmd(t, "outbox", "dead", "retry", "--collection", "users", "--key", "1")
	require.Equal(t, exitOK, code)
	require.Contains(t, out, "queued 1 dead letters")
	var retried struct {
		Queued int64 `json:"queued"`
	}
	b.jsonCmd(t, &retried, "outbox", "dead", "retry", "--dry-run")
	require.EqualValues(t, 2, retried.Queued)
	b.jsonCmd(t, &retried, "outbox", "dead", "retry")
	require.EqualValues(t, 2, retried.Queued)

	var dead, again int64
	require.NoError(t, b.env.Pool.QueryRow(context.Background(), `SELECT count(*) FILTER (WHERE publish_state = 'dead'),
		count(*) FILTER (WHERE publish_state = 'pending' AND attempts = 0 AND next_attempt_at <= now() AND dead_at IS NULL AND last_error IS NOT NULL)
		FROM outbox`).Scan(&dead, &again))
	require.Zero(t, dead)
	require.EqualValues(t, 3, again)
	b.jsonCmd(t, &st, "outbox", "status")
	require.Zero(t, st.Dead)

	// Bad usage is exit 2.
	code, _, errOut := b.cmd(t, "outbox", "dead", "list", "--since", "yesterday")
	require.Equal(t, exitUsage, code)
	require.Contains(t, errOut, "RFC 3339")
	code, _, _ = b.cmd(t, "outbox", "dead", "retry", "--key", "1")
	require.Equal(t, exitUsage, code)
}

func TestOutboxStatus(t *testing.T) {
	t.Parallel()
	b := setupAdmin(t)
	ctx := context.Background()
	for i := range 6 {
		b.put(t, "users", fmt.Sprint(i), `{}`)
	}
	// 0,1 finished; 2 retrying; 3 dead; 4,5 pending (publish not done yet).
	b.exec(t, `UPDATE outbox SET publish_state = 'done', cache_state = 'done' WHERE entity_id IN ('0', '1')`)
	b.exec(t, `UPDATE outbox SET attempts = 2, committed_at = now() - interval '90 seconds' WHERE entity_id = '2'`)
	b.exec(t, `UPDATE outbox SET publish_state = 'dead', attempts = 9, dead_at = now() WHERE entity_id = '3'`)
	var part int
	require.NoError(t, b.env.Pool.QueryRow(ctx, `SELECT part FROM outbox WHERE entity_id = '2'`).Scan(&part))
	b.exec(t, `INSERT INTO relays (id, hostname, pid) VALUES ('relay-a', 'host1', 42), ('relay-old', 'host2', 7)`)
	b.exec(t, `UPDATE relays SET heartbeat_at = now() - interval '10 minutes' WHERE id = 'relay-old'`)
	b.exec(t, `UPDATE leases SET owner = 'relay-a', epoch = 3, lease_until = now() + interval '20 seconds' WHERE part = $1`, part)

	var st struct {
		Pending             int64   `json:"pending"`
		Retrying            int64   `json:"retrying"`
		Dead                int64   `json:"dead"`
		Finished            int64   `json:"finished"`
		OldestDueAgeSeconds float64 `json:"oldest_due_age_seconds"`
		Partitions          []struct {
			Part       int     `json:"part"`
			Due        int64   `json:"due"`
			Owner      string  `json:"owner"`
			Epoch      int64   `json:"epoch"`
			LagSeconds float64 `json:"lag_seconds"`
		} `json:"partitions"`
		Relays []outbox.Relay `json:"relays"`
	}
	b.jsonCmd(t, &st, "outbox", "status")
	require.EqualValues(t, 2, st.Pending)
	require.EqualValues(t, 1, st.Retrying)
	require.EqualValues(t, 1, st.Dead)
	require.EqualValues(t, 2, st.Finished)
	require.InDelta(t, 90, st.OldestDueAgeSeconds, 10)
	require.Len(t, st.Partitions, outbox.Partitions)
	p := st.Partitions[part]
	require.Equal(t, part, p.Part)
	require.Equal(t, "relay-a", p.Owner)
	require.EqualValues(t, 3, p.Epoch)
	require.GreaterOrEqual(t, p.Due, int64(1))
	require.InDelta(t, 90, p.LagSeconds, 10)
	require.Len(t, st.Relays, 1)
	require.Equal(t, "relay-a", st.Relays[0].ID)

	code, out, _ := b.cmd(t, "outbox", "status")
	require.Equal(t, exitOK, code)
	require.Contains(t, out, "pending 2  retrying 1  dead 1  finished 2")
	require.Contains(t, out, "relays alive: 1")
	require.Contains(t, out, "relay-a")
}

func TestOutboxPrune(t *testing.T) {
	t.Parallel()
	b := setupAdmin(t)
	for i := range 7 {
		b.put(t, "users", fmt.Sprint(i), `{}`)
	}
	// 0-3 finished and old; 4 old but unpublished; 5 finished but recent.
	b.exec(t, `UPDATE outbox SET publish_state = 'done', cache_state = 'done', committed_at = now() - interval '100 hours' WHERE entity_id IN ('0','1','2','3')`)
	b.exec(t, `UPDATE outbox SET committed_at = now() - interval '100 hours' WHERE entity_id = '4'`)
	b.exec(t, `UPDATE outbox SET publish_state = 'done', cache_state = 'done' WHERE entity_id = '5'`)

	code, out, _ := b.cmd(t, "outbox", "prune", "--dry-run")
	require.Equal(t, exitOK, code)
	require.Contains(t, out, "would delete 4 finished entries")
	var res struct {
		Deleted int64 `json:"deleted"`
	}
	b.jsonCmd(t, &res, "outbox", "prune", "--batch", "3")
	require.EqualValues(t, 4, res.Deleted)
	var left int64
	require.NoError(t, b.env.Pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox`).Scan(&left))
	require.EqualValues(t, 3, left)
	b.jsonCmd(t, &res, "outbox", "prune", "--older-than", "0s")
	require.EqualValues(t, 1, res.Deleted) // entity 5
	code, _, _ = b.cmd(t, "outbox", "prune", "--older-than", "soon")
	require.Equal(t, exitUsage, code)
}

type cacheReport struct {
	Checked           int64 `json:"checked"`
	Missing           int64 `json:"missing"`
	Stale             int64 `json:"stale"`
	Ahead             int64 `json:"ahead"`
	DataMismatch      int64 `json:"data_mismatch"`
	TombstoneMismatch int64 `json:"tombstone_mismatch"`
	Orphans           int64 `json:"orphans"`
	Repaired          int64 `json:"repaired"`
	OrphansDeleted    int64 `json:"orphans_deleted"`
}

func (b *adminBundle) verify(t *testing.T, wantCode int, args ...string) cacheReport {
	t.Helper()
	code, out, errOut := b.cmd(t, append([]string{"cache", "verify", "--json"}, args...)...)
	require.Equal(t, wantCode, code, "stdout: %s\nstderr: %s", out, errOut)
	var rep cacheReport
	require.NoError(t, json.Unmarshal([]byte(out), &rep), out)
	return rep
}

func TestCacheVerifyRepair(t *testing.T) {
	t.Parallel()
	b := setupAdmin(t)
	ctx := context.Background()
	rdb := b.env.Redis
	for i := range 30 {
		b.put(t, "users", fmt.Sprint(i), fmt.Sprintf(`{"i": %d}`, i))
	}
	b.put(t, "orders", "a/b", `[1, 2]`)
	b.del(t, "users", "29")

	rep := b.verify(t, exitOK)
	require.EqualValues(t, 31, rep.Checked)

	// Flush the test's cache: every live key is missing; the deleted one is
	// fine without a key (an expired tombstone).
	testenv.DeletePrefix(rdb, b.env.Prefix)
	code, out, _ := b.cmd(t, "cache", "verify")
	require.Equal(t, exitFail, code)
	require.Regexp(t, `missing\s+30\n`, out)
	rep = b.verify(t, exitFail)
	require.EqualValues(t, 30, rep.Missing)
	require.EqualValues(t, 30, b.verify(t, exitFail).Missing)
	require.EqualValues(t, 29, b.verify(t, exitFail, "--collection", "users").Missing)

	var fixed cacheReport
	b.jsonCmd(t, &fixed, "cache", "repair")
	require.EqualValues(t, 30, fixed.Repaired)
	require.Zero(t, b.verify(t, exitOK, "--batch", "7").Missing)

	// Inject one divergence of each kind.
	k := func(c, id string) string { return b.env.Prefix + c + ":" + id }
	require.NoError(t, rdb.HSet(ctx, k("users", "1"), "v", "0").Err())                    // stale
	require.NoError(t, rdb.HSet(ctx, k("users", "2"), "d", `{"i": 999}`).Err())           // same v, different d
	require.NoError(t, rdb.HDel(ctx, k("users", "3"), "d").Err())                         // tombstone in Redis, live in PG
	require.NoError(t, rdb.HSet(ctx, k("users", "29"), "v", "2", "d", `{"i": 29}`).Err()) // live in Redis, deleted in PG
	require.NoError(t, rdb.HSet(ctx, k("users", "ghost"), "v", "4", "d", `{}`, "u", "x").Err())
	require.NoError(t, rdb.HSet(ctx, k("orders", "a/b"), "v", "7").Err()) // ahead
	rep = b.verify(t, exitFail)
	require.Equal(t, cacheReport{Checked: 31, Stale: 1, DataMismatch: 1, TombstoneMismatch: 2, Orphans: 1, Ahead: 1}, rep)
	require.EqualValues(t, 1, b.verify(t, exitFail, "--collection", "orders").Ahead)

	// repair fixes all but the orphan, which needs --delete-orphans.
	b.jsonCmd(t, &fixed, "cache", "repair")
	require.EqualValues(t, 5, fixed.Repaired)
	require.Zero(t, fixed.OrphansDeleted)
	rep = b.verify(t, exitFail)
	require.Equal(t, cacheReport{Checked: 31, Orphans: 1}, rep)
	code, out, _ = b.cmd(t, "cache", "repair", "--delete-orphans")
	require.Equal(t, exitOK, code)
	require.Contains(t, out, "deleted 1 orphans")
	b.verify(t, exitOK)

	h, err := rdb.HGetAll(ctx, k("users", "29")).Result()
	require.NoError(t, err)
	require.Equal(t, "2", h["v"])
	require.NotContains(t, h, "d")
	h, err = rdb.HGetAll(ctx, k("users", "2")).Result()
	require.NoError(t, err)
	require.Equal(t, `{"i": 2}`, h["d"])
	require.Zero(t, rdb.Exists(ctx, k("users", "ghost")).Val())

	code, _, _ = b.cmd(t, "cache", "verify", "--collection", "Bad:name")
	require.Equal(t, exitUsage, code)
	code, _, _ = b.cmd(t, "cache", "verify", "--delete-orphans")
	require.Equal(t, exitUsage, code)
}

// createStream creates the test's stream over its subjects.
func createStream(t *testing.T, env *testenv.Env) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(env.NATSURL)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: env.Stream, Subjects: []string{env.SubjectPrefix + ".>"}, Duplicates: 2 * time.Minute, Storage: jetstream.MemoryStorage,
	})
	require.NoError(t, err)
	return nc, js
}

// publishOriginals publishes the outbox's events as the relay would.
func publishOriginals(t *testing.T, b *adminBundle, js jetstream.JetStream) []*outbox.Entry {
	t.Helper()
	ctx := context.Background()
	entries, err := outbox.ReplayBatch(ctx, b.env.Pool, outbox.Filter{}, 0, 1000)
	require.NoError(t, err)
	for _, e := range entries {
		_, err := js.PublishMsg(ctx, cloudevent.Encode(e, "/writethrough", b.env.SubjectPrefix))
		require.NoError(t, err)
	}
	return entries
}

// consume reads n messages from a fresh consumer over the stream.
func consume(t *testing.T, js jetstream.JetStream, stream string, startSeq uint64, n int) []jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: startSeq})
	require.NoError(t, err)
	var out []jetstream.Msg
	for len(out) < n {
		batch, err := cons.Fetch(n-len(out), jetstream.FetchMaxWait(5*time.Second))
		require.NoError(t, err)
		got := 0
		for m := range batch.Messages() {
			out = append(out, m)
			got++
		}
		require.NotZero(t, got, "stream ran dry after %d of %d messages", len(out), n)
	}
	return out
}

func TestOutboxReplayEvents(t *testing.T) {
	t.Parallel()
	b := setupAdmin(t)
	ctx := context.Background()
	_, js := createStream(t, b.env)
	for i := range 4 {
		b.put(t, "users", fmt.Sprint(i), fmt.Sprintf(`{"i": %d}`, i))
	}
	b.del(t, "users", "0")
	b.put(t, "orders", "1", `{}`)
	originals := publishOriginals(t, b, js)
	require.Len(t, originals, 6)
	// Entries before the range: move users/3 an hour back.
	b.exec(t, `UPDATE outbox SET committed_at = committed_at - interval '1 hour' WHERE entity_id = '3'`)

	// The downstream consumer lost its state: it reads from the stream
	// again after the replay, from where the replay starts.
	info, err := js.Stream(ctx, b.env.Stream)
	require.NoError(t, err)
	st, err := info.Info(ctx)
	require.NoError(t, err)
	next := st.State.LastSeq + 1

	since := time.Now().Add(-10 * time.Minute).UTC().Format(time.RFC3339)
	var dry replayReport
	b.jsonCmd(t, &dry, "outbox", "replay", "--events", "--since", since, "--collection", "users", "--dry-run")
	require.EqualValues(t, 4, dry.Events.Selected)
	require.Nil(t, dry.Cache)

	var rep replayReport
	b.jsonCmd(t, &rep, "outbox", "replay", "--events", "--since", since, "--collection", "users", "--replay-id", "run1")
	require.EqualValues(t, 4, rep.Events.Published)
	msgs := consume(t, js, b.env.Stream, next, 4)
	byID := map[string]*outbox.Entry{}
	for _, e := range originals {
		byID[e.EventID.String()] = e
	}
	var versions []string
	for _, m := range msgs {
		h := m.Headers()
		orig := byID[h.Get("ce-id")]
		require.NotNil(t, orig, "replayed event %s has an unknown ce-id", h.Get("ce-id"))
		require.Equal(t, "users", orig.Collection)
		require.NotEqual(t, "3", orig.EntityID)
		require.Equal(t, string(orig.Representation()), string(m.Data()))
		require.Equal(t, "true", h.Get("ce-replay"))
		require.Equal(t, "run1", h.Get("ce-replayid"))
		require.Equal(t, h.Get("ce-id")+":replay:run1", h.Get("Nats-Msg-Id"))
		require.Equal(t, "1.0", h.Get("ce-specversion"))
		versions = append(versions, h.Get("ce-subject")+"@"+h.Get("ce-entityversion"))
	}
	require.Equal(t, []string{"users/0@1", "users/1@1", "users/2@1", "users/0@2"}, versions, "seq order, so per key version order")

	// Safe to run again: the same replay id is deduplicated.
	b.jsonCmd(t, &rep, "outbox", "replay", "--events", "--since", since, "--collection", "users", "--replay-id", "run1")
	require.EqualValues(t, 0, rep.Events.Published)
	require.EqualValues(t, 4, rep.Events.Duplicates)

	// events tail sees them from a sequence, filtered by key and type.
	code, out, errOut := b.cmd(t, "events", "tail", "--since-seq", fmt.Sprint(next), "--collection", "users", "--key", "0", "--type", "delete", "--limit", "1", "--json")
	require.Equal(t, exitOK, code, errOut)
	var te tailedEvent
	require.NoError(t, json.Unmarshal([]byte(strings.TrimSpace(out)), &te))
	require.Equal(t, "writethrough.entity.delete", te.Type)
	require.Equal(t, "users/0", te.EntitySubject)
	require.True(t, te.Replay)
	require.JSONEq(t, `{"collection":"users","id":"0","version":2,"data":null,"deleted":true,"updated_at":"`+te.Time+`"}`, string(te.Data))
	code, out, _ = b.cmd(t, "events", "tail", "--since-seq", "1", "--limit", "2")
	require.Equal(t, exitOK, code)
	require.Len(t, strings.Split(strings.TrimSpace(out), "\n"), 2)
	require.Contains(t, out, "#1 ")

	code, _, _ = b.cmd(t, "outbox", "replay")
	require.Equal(t, exitUsage, code, "a replay needs a selection")
}

func TestEventsTailFromNow(t *testing.T) {
	t.Parallel()
	b := setupAdmin(t)
	_, js := createStream(t, b.env)
	b.put(t, "users", "old", `{}`)
	publishOriginals(t, b, js)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out testenv.SyncBuffer
	done := make(chan int, 1)
	go func() {
		var errOut bytes.Buffer
		done <- run(ctx, []string{"events", "tail", "--collection", "users", "--limit", "1"}, func(k string) string { return b.vars[k] }, &out, &errOut)
	}()
	// Publish until the tail (which starts from now) prints one; the old
	// event must never show.
	testenv.Eventually(t, 15*time.Second, func() bool {
		msg := cloudevent.Encode(&outbox.Entry{EventID: uuid.New(), Collection: "users", EntityID: "new", Version: 1, Op: outbox.OpPut, Data: []byte(`{}`), CommittedAt: time.Now()}, "/w", b.env.SubjectPrefix)
		_, err := js.PublishMsg(ctx, msg)
		require.NoError(t, err)
		return strings.Contains(out.String(), "users/new")
	}, "tail printed nothing")
	require.Equal(t, exitOK, <-done)
	require.NotContains(t, out.String(), "users/old")
}

func TestOutboxReplayCacheDuringWrites(t *testing.T) {
	t.Parallel()
	b := setupAdmin(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const keys = 20
	for i := range keys {
		b.put(t, "hot", fmt.Sprint(i), `{"n": 0}`)
	}
	// Writers keep bumping versions while a reader checks, per key, that
	// the version in Redis never goes backwards.
	var wg sync.WaitGroup
	var writes atomic.Int64
	for w := range 3 {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				id := fmt.Sprint((n*7 + w) % keys)
				_, err := b.w.Do(ctx, func(tx writer.Tx) error {
					_, err := tx.Put(ctx, "hot", id, fmt.Appendf(nil, `{"n": %d}`, n))
					return err
				})
				if err == nil {
					writes.Add(1)
				}
			}
		})
	}
	var regressions atomic.Int64
	var polls atomic.Int64
	wg.Go(func() {
		last := make([]int64, keys)
		for ctx.Err() == nil {
			for i := range keys {
				v, err := b.env.Redis.HGet(ctx, b.env.Prefix+"hot:"+fmt.Sprint(i), "v").Int64()
				if err != nil {
					continue // absent after our own flushes
				}
				if v < last[i] {
					regressions.Add(1)
				}
				last[i] = v
			}
			polls.Add(1)
		}
	})
	// The replay reads rows that writers overtake while it runs; the fence
	// must keep it from writing those older versions over newer ones.
	for range 5 {
		var rep replayReport
		b.jsonCmd(t, &rep, "outbox", "replay", "--cache", "--collection", "hot")
		require.EqualValues(t, keys, rep.Cache.Selected)
		require.Nil(t, rep.Events)
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return writes.Load() > 200 && polls.Load() > 50 }, "workload too slow")
	cancel()
	wg.Wait()
	require.Zero(t, regressions.Load(), "a cached version went backwards")

	// After the writers stop, a refresh over an emptied cache restores it.
	testenv.DeletePrefix(b.env.Redis, b.env.Prefix)
	var rep replayReport
	b.jsonCmd(t, &rep, "outbox", "replay", "--cache", "--collection", "hot")
	require.EqualValues(t, keys, rep.Cache.Applied)
	b.verify(t, exitOK)
}

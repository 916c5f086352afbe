package chaos

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Hand-made histories: each checker passes the good one and reports the bad
// one, naming the operations that show it.

const ms = int64(time.Millisecond)

type hb struct{ h *History }

func newHB() *hb { return &hb{h: &History{}} }

func (b *hb) write(kind Kind, from, to int64, status int, cw string, items ...Item) *hb {
	b.h.Record(Op{Kind: kind, Invoke: from * ms, Complete: to * ms, Status: status, CacheWrite: cw, Items: items})
	return b
}

func (b *hb) put(from, to int64, key string, v int64, cw string) *hb {
	return b.write(KindPut, from, to, 200, cw, Item{Key: key, Version: v, Data: dataOf(v)})
}

// read records a read that saw v (0: miss) from source.
func (b *hb) read(from, to int64, key string, v int64, source string) *hb {
	kind, status := KindGetAPI, 200
	if source == SourceRedis {
		kind = KindGetRedis
	} else if v == 0 {
		status = 404
	}
	it := Item{Key: key, Version: v}
	if v > 0 {
		it.Data = dataOf(v)
	}
	b.h.Record(Op{Client: 1, Kind: kind, Invoke: from * ms, Complete: to * ms, Status: status, Source: source, Items: []Item{it}})
	return b
}

func (b *hb) fault(kind FaultKind, from, to int64) *hb {
	b.h.AddFault(Fault{Kind: kind, Start: from * ms, End: to * ms})
	return b
}

func dataOf(v int64) string { return fmt.Sprintf(`{"n": %d}`, v) }

func TestNoRegression(t *testing.T) {
	t.Parallel()
	t.Run("monotonic and concurrent reads pass", func(t *testing.T) {
		h := newHB().
			read(0, 10, "c/a", 5, SourceRedis).
			read(5, 30, "c/a", 4, SourceHit).    // concurrent with the first
			read(20, 30, "c/a", 0, SourceRedis). // a miss is allowed
			read(40, 50, "c/a", 5, SourceMiss).
			read(40, 50, "c/b", 1, SourceRedis).h
		r := CheckNoRegression(h)
		require.Empty(t, r.Violations)
		require.Equal(t, 5, r.Checked)
	})
	t.Run("a later read seeing less is reported with both reads", func(t *testing.T) {
		h := newHB().
			read(0, 10, "c/a", 5, SourceHit).
			read(11, 12, "c/a", 7, SourceRedis).
			read(20, 30, "c/a", 6, SourceRedis).h
		r := CheckNoRegression(h)
		require.Len(t, r.Violations, 1)
		v := r.First()
		require.Equal(t, "c/a", v.Key)
		require.Equal(t, int64(7), v.Ops[0].Items[0].Version)
		require.Equal(t, int64(6), v.Ops[1].Items[0].Version)
	})
	t.Run("a Postgres-served read during a Redis fault bounds only after the repair window", func(t *testing.T) {
		b := newHB().fault(FaultRedisCut, 100, 200).
			read(150, 160, "c/a", 9, SourceMiss). // served from Postgres while Redis was cut
			read(300, 310, "c/a", 8, SourceRedis) // cache not yet repaired: allowed
		require.Empty(t, CheckNoRegression(b.h).Violations)
		b.read(200+int64(RepairWindow/time.Millisecond)+1, 6000, "c/a", 8, SourceRedis)
		require.Len(t, CheckNoRegression(b.h).Violations, 1)
	})
	t.Run("so does one just after the heal, while the service reconnects", func(t *testing.T) {
		// Found in seed 1011: a GET 54ms after a Redis cut healed was still
		// served from Postgres, newer than the cache the relay had yet to
		// repair.
		b := newHB().fault(FaultRedisCut, 100, 200).
			read(254, 338, "c/a", 2519, SourceMiss).
			read(342, 343, "c/a", 2509, SourceRedis)
		require.Empty(t, CheckNoRegression(b.h).Violations)
		b.read(200+int64(RepairWindow/time.Millisecond)+1, 6000, "c/a", 2509, SourceRedis)
		require.Len(t, CheckNoRegression(b.h).Violations, 1, "after the repair window the cache must have caught up")
	})
	t.Run("a cache hit during a Redis fault is not exempt", func(t *testing.T) {
		h := newHB().fault(FaultRedisSlow, 100, 200).
			read(150, 160, "c/a", 9, SourceHit).
			read(170, 180, "c/a", 8, SourceRedis).h
		require.Len(t, CheckNoRegression(h).Violations, 1)
	})
}

func TestReadYourAckedWrite(t *testing.T) {
	t.Parallel()
	t.Run("reads after an ok write see it, newer, or a miss", func(t *testing.T) {
		h := newHB().
			put(0, 10, "c/a", 3, CacheOK).
			read(5, 20, "c/a", 2, SourceRedis). // concurrent: allowed
			read(11, 20, "c/a", 3, SourceRedis).
			read(11, 20, "c/a", 0, SourceRedis).
			read(11, 20, "c/a", 4, SourceHit).h
		require.Empty(t, CheckReadYourAckedWrite(h).Violations)
	})
	t.Run("a pending write promises nothing", func(t *testing.T) {
		h := newHB().
			put(0, 10, "c/a", 3, CachePending).
			read(11, 20, "c/a", 2, SourceRedis).h
		require.Empty(t, CheckReadYourAckedWrite(h).Violations)
	})
	t.Run("a stale read after an ok write is reported", func(t *testing.T) {
		h := newHB().
			put(0, 10, "c/a", 3, CacheOK).
			read(11, 20, "c/a", 2, SourceRedis).h
		r := CheckReadYourAckedWrite(h)
		require.Len(t, r.Violations, 1)
		require.Equal(t, KindPut, r.First().Ops[0].Kind)
		require.Equal(t, KindGetRedis, r.First().Ops[1].Kind)
	})
	t.Run("a batch counts with its last version of each key", func(t *testing.T) {
		h := newHB().
			write(KindBatch, 0, 10, 200, CacheOK, Item{Key: "c/a", Version: 4}, Item{Key: "c/a", Version: 5}, Item{Key: "c/b", Version: 1}).
			read(11, 20, "c/a", 4, SourceRedis).h
		require.Len(t, CheckReadYourAckedWrite(h).Violations, 1)
	})
}

func TestLinearizable(t *testing.T) {
	t.Parallel()
	opt := LinearOptions{Timeout: 10 * time.Second}
	t.Run("a linearizable history passes", func(t *testing.T) {
		h := newHB().
			put(0, 10, "c/a", 1, CacheOK).
			read(5, 15, "c/a", 0, SourceHit). // 404 before the put took effect
			put(20, 40, "c/a", 2, CacheOK).
			read(25, 30, "c/a", 1, SourceRedis). // concurrent with v2
			read(35, 50, "c/a", 2, SourceHit).
			read(60, 70, "c/a", 4, SourceRedis). // v3, v4 by writes with lost answers
			write(KindDelete, 80, 90, 204, CacheOK, Item{Key: "c/a", Version: 5, Deleted: true}).
			read(95, 99, "c/a", 0, SourceHit).h
		r := CheckLinearizable(h, opt)
		require.Empty(t, r.Violations)
		require.Equal(t, 8, r.Checked)
	})
	t.Run("a stale read after a completed write is reported", func(t *testing.T) {
		h := newHB().
			put(0, 10, "c/a", 1, CacheOK).
			put(20, 30, "c/a", 2, CacheOK).
			read(40, 50, "c/a", 1, SourceHit).h
		r := CheckLinearizable(h, opt)
		require.Len(t, r.Violations, 1)
		require.NotEmpty(t, r.First().Ops)
	})
	t.Run("two values under one version are reported", func(t *testing.T) {
		h := newHB().put(0, 10, "c/a", 1, CacheOK).h
		h.Record(Op{Kind: KindGetRedis, Invoke: 20 * ms, Complete: 30 * ms, Status: 200, Source: SourceRedis,
			Items: []Item{{Key: "c/a", Version: 1, Data: `{"other": true}`}}})
		require.Len(t, CheckLinearizable(h, opt).Violations, 1)
	})
	t.Run("a 404 after a completed put is reported", func(t *testing.T) {
		h := newHB().
			put(0, 10, "c/a", 1, CacheOK).
			read(20, 30, "c/a", 0, SourceHit).
			read(40, 50, "c/a", 1, SourceHit).h
		require.Len(t, CheckLinearizable(h, opt).Violations, 1)
	})
	t.Run("a write's 404 read Postgres, ahead of the cache, and is left out", func(t *testing.T) {
		h := newHB().
			put(0, 10, "c/a", 7, CacheOK).
			write(KindDelete, 20, 50, 204, CacheOK, Item{Key: "c/a", Version: 8, Deleted: true}).
			write(KindPatch, 22, 30, 404, "", Item{Key: "c/a"}). // saw the delete committed
			read(31, 32, "c/a", 7, SourceHit).h                  // the cache write is still to come
		require.Empty(t, CheckLinearizable(h, opt).Violations)
	})
	t.Run("operations in a fault or its settling time are left out", func(t *testing.T) {
		h := newHB().
			fault(FaultKill, 15, 20).
			put(0, 10, "c/a", 1, CacheOK).
			put(20, 30, "c/a", 2, CacheOK).
			read(40, 50, "c/a", 1, SourceHit).h
		require.Empty(t, CheckLinearizable(h, opt).Violations)
	})
	t.Run("the failing key's history can be visualised", func(t *testing.T) {
		dir := t.TempDir()
		h := newHB().
			put(0, 10, "c/a", 1, CacheOK).
			put(20, 30, "c/a", 2, CacheOK).
			read(40, 50, "c/a", 1, SourceHit).h
		r := CheckLinearizable(h, LinearOptions{VisualizeDir: dir})
		require.Len(t, r.Violations, 1)
		files, err := filepath.Glob(filepath.Join(dir, "*.html"))
		require.NoError(t, err)
		require.Len(t, files, 1)
		b, err := os.ReadFile(files[0])
		require.NoError(t, err)
		require.Contains(t, string(b), "<html")
	})
}

func TestFaultFreeSegments(t *testing.T) {
	t.Parallel()
	segs := FaultFreeSegments([]Fault{{Start: 10, End: 20}, {Start: 15, End: 30}, {Start: 50, End: 55}}, 100, 5)
	require.Equal(t, []Segment{{0, 10}, {35, 50}, {60, 100}}, segs)
}

func TestConvergence(t *testing.T) {
	t.Parallel()
	row := Row{Version: 3, Data: `{"a": 1}`, UpdatedAt: "2026-01-01T00:00:00.000001Z"}
	same := Cached{Version: 3, Data: row.Data, UpdatedAt: row.UpdatedAt}
	require.Empty(t, Divergence(row, true, same, true))
	require.Empty(t, Divergence(row, true, Cached{}, false), "absent is allowed")
	stale := same
	stale.Version = 2
	require.Contains(t, Divergence(row, true, stale, true), "redis v2, postgres v3")
	other := same
	other.Data = `{"a": 2}`
	require.Contains(t, Divergence(row, true, other, true), "redis d=")
	tomb := Cached{Version: 3, Deleted: true, UpdatedAt: row.UpdatedAt}
	require.Contains(t, Divergence(row, true, tomb, true), "deleted")
	require.Contains(t, Divergence(Row{}, false, same, true), "no row")
	require.Equal(t, map[string]string{"c/b": "redis v2, postgres v3"},
		Divergences(map[string]Row{"c/a": row, "c/b": row}, map[string]Cached{"c/a": same, "c/b": stale}))

	ok := CheckConvergence(Convergence{Times: map[string]time.Duration{"c/a": time.Second}})
	require.Empty(t, ok.Violations)
	slow := CheckConvergence(Convergence{Times: map[string]time.Duration{"c/a": 6 * time.Second}})
	require.Len(t, slow.Violations, 1)
	never := CheckConvergence(Convergence{Diverged: map[string]string{"c/a": "redis v2, postgres v3"}})
	require.Len(t, never.Violations, 1)

	require.Equal(t, 99*time.Millisecond, Percentile(durations(100), 99))
	require.Equal(t, 100*time.Millisecond, Percentile(durations(100), 100))
}

func durations(n int) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = time.Duration(n-i) * time.Millisecond
	}
	return out
}

func goodStream() ([]Change, []Event) {
	committed := []Change{
		{EventID: "e1", Key: "c/a", Version: 1, Data: `{"x": 1}`, CommittedAt: "t1"},
		{EventID: "e2", Key: "c/a", Version: 2, Deleted: true, CommittedAt: "t2"},
		{EventID: "e3", Key: "c/b", Version: 1, Data: `{"y": 1}`, CommittedAt: "t3"},
	}
	stream := []Event{
		{StreamSeq: 1, Subject: "wt.c.put", ID: "e1", Type: "writethrough.entity.put", Key: "c/a", Version: 1, Time: "t1", Data: `{"x": 1}`},
		{StreamSeq: 2, Subject: "wt.c.put", ID: "e3", Type: "writethrough.entity.put", Key: "c/b", Version: 1, Time: "t3", Data: `{"y": 1}`},
		{StreamSeq: 3, Subject: "wt.c.delete", ID: "e2", Type: "writethrough.entity.delete", Key: "c/a", Version: 2, Time: "t2", Deleted: true},
	}
	return committed, stream
}

func TestEvents(t *testing.T) {
	t.Parallel()
	t.Run("a complete stream in order passes, repeats of a ce-id too", func(t *testing.T) {
		c, s := goodStream()
		require.Empty(t, CheckEvents(c, s, "wt").Violations)
		dup := s[0]
		dup.StreamSeq = 4
		require.Empty(t, CheckEvents(c, append(s, dup), "wt").Violations)
	})
	cases := map[string]func(c []Change, s []Event) ([]Change, []Event){
		"missing": func(c []Change, s []Event) ([]Change, []Event) { return c, s[:2] },
		"out of order": func(c []Change, s []Event) ([]Change, []Event) {
			s[0], s[2] = s[2], s[0]
			return c, s
		},
		"second ce-id for a version": func(c []Change, s []Event) ([]Change, []Event) {
			e := s[0]
			e.ID, e.StreamSeq = "e9", 9
			c = append(c, Change{EventID: "e9", Key: "c/a", Version: 1, Data: `{"x": 1}`, CommittedAt: "t1"})
			return c, append(s, e)
		},
		"not committed": func(c []Change, s []Event) ([]Change, []Event) {
			e := s[1]
			e.ID, e.Version, e.StreamSeq = "e7", 2, 7
			return c, append(s, e)
		},
		"old payload under a new version": func(c []Change, s []Event) ([]Change, []Event) {
			s[1].Data = `{"y": 0}`
			return c, s
		},
		"wrong subject": func(c []Change, s []Event) ([]Change, []Event) {
			s[2].Subject = "wt.c.put"
			return c, s
		},
		"malformed": func(c []Change, s []Event) ([]Change, []Event) {
			s[1].Problem = "no ce-id"
			return c, s
		},
	}
	for name, mutate := range cases {
		t.Run(name+" is reported", func(t *testing.T) {
			c, s := goodStream()
			c, s = mutate(c, s)
			require.NotEmpty(t, CheckEvents(c, s, "wt").Violations)
		})
	}
}

func TestNothingLost(t *testing.T) {
	t.Parallel()
	committed := []Change{
		{EventID: "e1", Key: "c/a", Version: 1, Data: dataOf(1)},
		{EventID: "e2", Key: "c/a", Version: 2, Data: dataOf(2)},
	}
	rows := map[string]Row{"c/a": {Version: 2, Data: dataOf(2)}}
	good := newHB().put(0, 10, "c/a", 1, CacheOK).put(10, 20, "c/a", 2, CachePending).h
	good.Record(Op{Kind: KindPut, Status: 0, Items: nil}) // unknown outcome
	require.Empty(t, CheckNothingLost(good, committed, rows).Violations)

	lost := newHB().put(0, 10, "c/a", 3, CacheOK).h
	require.Len(t, CheckNothingLost(lost, committed, rows).Violations, 1)
	rolledBack := newHB().put(0, 10, "c/a", 2, CacheOK).h
	require.Len(t, CheckNothingLost(rolledBack, committed, map[string]Row{"c/a": {Version: 1}}).Violations, 1)
	otherData := newHB().write(KindPut, 0, 10, 200, CacheOK, Item{Key: "c/a", Version: 2, Data: `{"z": 0}`}).h
	require.Len(t, CheckNothingLost(otherData, committed, rows).Violations, 1)
}

package chaos

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

	"github.com/writethrough/writethrough/internal/pg"
	"github.com/writethrough/writethrough/migrations"
)

// Config of one run. Zero values mean the defaults.
type Config struct {
	// Seed drives the fault plan and the clients; the same seed gives the
	// same plan.
	Seed int64
	// Duration of the workload; default 60s (the plan may extend it so that
	// every fault kind fits).
	Duration time.Duration
	// Kinds of fault to inject; default AllFaultKinds. Empty with NoFaults.
	Kinds    []FaultKind
	NoFaults bool
	// Keys is the number of hot keys; default 8 (one of them has a "/").
	Keys int
	// Writers, Readers and RedisReaders are client counts; default 6, 2, 2.
	Writers, Readers, RedisReaders int
	// Binary is `writethrough` built with -tags chaos (BuildBinary).
	Binary string
	// Dir receives the service and Redis logs; default a temporary one.
	Dir string
	// DatabaseURL and NATSURL are the shared servers; each run gets its own
	// schema and stream. Redis is always private.
	DatabaseURL string
	NATSURL     string
	// Broken is passed to the service as WT_BROKEN: a deliberately broken
	// variant compiled in with the chaos tag ("unfenced").
	Broken string
	// Closing is the plan's last fault, whose heal ends the workload so that
	// convergence measures the repair after it; default FaultRedisCut.
	Closing FaultKind
	// VisualizeDir receives porcupine visualisations of failing histories.
	VisualizeDir string
	// Logf prints progress; default none.
	Logf func(format string, args ...any)
}

// Outcome of a run: the report, and the history for further checks.
type Outcome struct {
	Report  *Report
	History *History
	Plan    Plan
	Dir     string
}

// Run runs one seed end to end: private Redis, proxies, the service, the
// workload under the fault plan, then convergence, events and every checker.
// An error means the run itself could not be carried out; violations are in
// the report.
func Run(ctx context.Context, cfg Config) (*Outcome, error) {
	cfg.Duration = cmp.Or(cfg.Duration, 60*time.Second)
	cfg.Keys = cmp.Or(cfg.Keys, 8)
	cfg.Writers = cmp.Or(cfg.Writers, 6)
	cfg.Readers = cmp.Or(cfg.Readers, 2)
	cfg.RedisReaders = cmp.Or(cfg.RedisReaders, 2)
	if cfg.Kinds == nil && !cfg.NoFaults {
		cfg.Kinds = AllFaultKinds
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.Binary == "" {
		return nil, errors.New("chaos: Config.Binary is required")
	}
	if cfg.Dir == "" {
		d, err := os.MkdirTemp("", "wt-chaos-")
		if err != nil {
			return nil, err
		}
		cfg.Dir = d
	}
	plan := Plan{Seed: cfg.Seed, Duration: cfg.Duration}
	if !cfg.NoFaults {
		plan = NewPlan(cfg.Seed, cfg.Duration, cfg.Kinds)
		if cfg.Closing != "" && cfg.Closing != FaultRedisCut {
			last := &plan.Faults[len(plan.Faults)-1]
			last.Kind, last.For = cfg.Closing, time.Second
			if cfg.Closing.crashPoint() != "" {
				last.For = 8 * time.Second
			}
		}
	}
	cfg.Logf("chaos seed=%d (replay: WT_CHAOS_SEEDS=%d) dir=%s\n%s", cfg.Seed, cfg.Seed, cfg.Dir, plan)

	r := &run{cfg: cfg, plan: plan}
	defer r.cleanup()
	if err := r.setup(ctx); err != nil {
		return nil, err
	}
	return r.execute(ctx)
}

type run struct {
	cfg    Config
	plan   Plan
	id     string
	schema string
	stream string
	subj   string
	prefix string

	redis    *privateRedis
	px       *proxies
	svc      *service
	check    *pgxpool.Pool
	rdb      *redis.Client
	cleanups []func()
}

func (r *run) cleanup() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

func randomID() string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (r *run) setup(ctx context.Context) error {
	cfg := r.cfg
	r.id = randomID()
	r.schema = "chaos_" + r.id
	r.stream = "CHAOS_" + strings.ToUpper(r.id)
	r.subj = "chaos" + r.id
	r.prefix = "wt:"

	if err := migrations.Up(ctx, cfg.DatabaseURL, r.schema); err != nil {
		return fmt.Errorf("migrate schema %s: %w", r.schema, err)
	}
	r.cleanups = append(r.cleanups, func() { dropSchema(cfg.DatabaseURL, r.schema) })
	pool, err := pg.Open(ctx, pg.Config{URL: cfg.DatabaseURL, Schema: r.schema})
	if err != nil {
		return err
	}
	r.check = pool
	r.cleanups = append(r.cleanups, pool.Close)

	if r.redis, err = startRedis(cfg.Dir); err != nil {
		return err
	}
	r.cleanups = append(r.cleanups, r.redis.kill)
	r.rdb = redis.NewClient(&redis.Options{Addr: r.redis.Addr(), ReadTimeout: time.Second, WriteTimeout: time.Second, MaxRetries: -1, ContextTimeoutEnabled: true})
	r.cleanups = append(r.cleanups, func() { r.rdb.Close() })

	r.px = newProxies()
	r.cleanups = append(r.cleanups, r.px.close)
	dbURL, err := url.Parse(cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("database URL: %w", err)
	}
	natsURL, err := url.Parse(cfg.NATSURL)
	if err != nil {
		return fmt.Errorf("NATS URL: %w", err)
	}
	pgAddr, err := r.px.add(proxyPG, hostPort(dbURL, "5432"))
	if err != nil {
		return err
	}
	redisAddr, err := r.px.add(proxyRedis, r.redis.Addr())
	if err != nil {
		return err
	}
	natsAddr, err := r.px.add(proxyNATS, hostPort(natsURL, "4222"))
	if err != nil {
		return err
	}
	r.cleanups = append(r.cleanups, func() { deleteStream(cfg.NATSURL, r.stream) })

	httpPort, err := freePort()
	if err != nil {
		return err
	}
	viaProxy := *dbURL
	viaProxy.Host = pgAddr
	env := []string{
		"DATABASE_URL=" + viaProxy.String(),
		"WT_DB_SCHEMA=" + r.schema,
		"REDIS_URL=redis://" + redisAddr + "/0",
		"NATS_URL=nats://" + natsAddr,
		"WT_HTTP_ADDR=127.0.0.1:" + strconv.Itoa(httpPort),
		"WT_REDIS_PREFIX=" + r.prefix,
		"WT_NATS_STREAM=" + r.stream,
		"WT_NATS_SUBJECT_PREFIX=" + r.subj,
		"WT_CRASHPOINT=",
		"WT_BROKEN=" + cfg.Broken,
	}
	r.svc, err = newService(cfg.Binary, "127.0.0.1:"+strconv.Itoa(httpPort), env, filepath.Join(cfg.Dir, "service.log"))
	if err != nil {
		return err
	}
	r.cleanups = append(r.cleanups, r.svc.stop)
	if err := r.svc.start(ctx); err != nil {
		return fmt.Errorf("%w (see %s)", err, filepath.Join(cfg.Dir, "service.log"))
	}
	return nil
}

func hostPort(u *url.URL, port string) string {
	if u.Port() == "" {
		return net.JoinHostPort(u.Hostname(), port)
	}
	return u.Host
}

func (r *run) execute(ctx context.Context) (*Outcome, error) {
	cfg := r.cfg
	h := NewHistory()
	ids := make([]string, cfg.Keys)
	for i := range ids {
		ids[i] = "k" + strconv.Itoa(i)
	}
	if len(ids) > 1 {
		ids[len(ids)-1] = "with/slash"
	}
	w := &workload{
		h: h, base: "http://" + r.svc.addr,
		http: &http.Client{
			Timeout:   3 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 30 * time.Second},
		},
		rdb: r.rdb, prefix: r.prefix, collection: "chaos", ids: ids, seed: cfg.Seed,
	}
	in := &injector{h: h, px: r.px, redis: r.redis, svc: r.svc, seed: cfg.Seed, logf: cfg.Logf}

	wctx, stopWorkload := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { w.run(wctx, cfg.Writers, cfg.Readers, cfg.RedisReaders) })
	var injectErr error
	if cfg.NoFaults {
		_ = sleepCtx(ctx, r.plan.Duration)
	} else {
		// The workload ends when the plan's closing fault heals.
		injectErr = in.run(ctx, r.plan)
	}
	stopWorkload()
	wg.Wait()
	h.End = h.Now()
	if injectErr != nil {
		return nil, injectErr
	}
	if err := in.ensureRunning(ctx); err != nil {
		return nil, err
	}
	cfg.Logf("workload done: %d operations, %d faults, last heal at %s", len(h.Ops), len(h.Faults), fmtTime(h.LastHeal()))

	conv, err := r.converge(ctx, h, w.Keys())
	if err != nil {
		return nil, err
	}
	cfg.Logf("convergence: %d keys diverged when the workload stopped; %d matched, %d still diverged", conv.AtStart, len(conv.Times), len(conv.Diverged))
	pending, err := waitPublished(ctx, r.check, 30*time.Second)
	if err != nil {
		return nil, err
	}
	if pending > 0 {
		cfg.Logf("%d outbox entries still unpublished after 30s", pending)
	}
	// A last look at the cache, after the relay had all this time: a stale
	// write landing late shows here.
	if err := r.finalCacheCheck(ctx, &conv, w.Keys()); err != nil {
		return nil, err
	}
	committed, err := loadCommitted(ctx, r.check)
	if err != nil {
		return nil, err
	}
	rows, err := loadRows(ctx, r.check)
	if err != nil {
		return nil, err
	}
	events, err := readStream(ctx, cfg.NATSURL, r.stream)
	if err != nil {
		return nil, err
	}
	cfg.Logf("collected: %d committed changes, %d events, %d still unpublished; checking", len(committed), len(events), pending)
	started := time.Now()
	results := []Result{
		CheckNoRegression(h),
		CheckReadYourAckedWrite(h),
		CheckLinearizable(h, LinearOptions{VisualizeDir: cfg.VisualizeDir}),
		CheckConvergence(conv),
		CheckEvents(committed, events, r.subj),
		CheckNothingLost(h, committed, rows),
	}
	cfg.Logf("checked in %s", time.Since(started).Round(time.Millisecond))
	rep := NewReport(cfg.Seed, h, conv, len(events), results...)
	rep.UnexpectedExits = in.unexpected
	return &Outcome{Report: rep, History: h, Plan: r.plan, Dir: cfg.Dir}, nil
}

// converge polls Postgres and Redis until every key matches (or is absent),
// for up to three times the repair window, and records per key how long it
// took from the later of the last heal and the key's last write.
func (r *run) converge(ctx context.Context, h *History, keys []string) (Convergence, error) {
	lastHeal := h.LastHeal()
	since := map[string]int64{}
	for _, k := range keys {
		since[k] = lastHeal
	}
	for i := range h.Ops {
		op := &h.Ops[i]
		if !op.Kind.IsWrite() {
			continue
		}
		for _, it := range op.Items {
			since[it.Key] = max(since[it.Key], op.Complete)
		}
	}
	conv := Convergence{From: time.Duration(h.End), Times: map[string]time.Duration{}, Diverged: map[string]string{}}
	deadline := time.Now().Add(3 * RepairWindow)
	first := true
	for {
		pgRows, err := loadRows(ctx, r.check)
		if err != nil {
			return conv, err
		}
		cache, err := loadCache(ctx, r.rdb, r.prefix, keys)
		if err != nil {
			return conv, err
		}
		now := h.Now()
		clear(conv.Diverged)
		for _, k := range keys {
			if _, done := conv.Times[k]; done {
				continue
			}
			row, inPG := pgRows[k]
			c, inRedis := cache[k]
			if d := Divergence(row, inPG, c, inRedis); d != "" {
				conv.Diverged[k] = d
				continue
			}
			conv.Times[k] = time.Duration(max(0, now-since[k]))
		}
		if first {
			conv.AtStart, first = len(conv.Diverged), false
		}
		if len(conv.Diverged) == 0 || time.Now().After(deadline) {
			return conv, nil
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return conv, err
		}
	}
}

// finalCacheCheck compares every key once more; a key that had converged
// and diverges again is reported.
func (r *run) finalCacheCheck(ctx context.Context, conv *Convergence, keys []string) error {
	pgRows, err := loadRows(ctx, r.check)
	if err != nil {
		return err
	}
	cache, err := loadCache(ctx, r.rdb, r.prefix, keys)
	if err != nil {
		return err
	}
	for _, k := range keys {
		row, inPG := pgRows[k]
		c, inRedis := cache[k]
		if d := Divergence(row, inPG, c, inRedis); d != "" {
			conv.Diverged[k] = "at the end: " + d
		}
	}
	return nil
}

func dropSchema(dbURL, schema string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return
	}
	defer conn.Close(ctx)
	_, _ = conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
}

func deleteStream(natsURL, stream string) {
	nc, err := nats.Connect(natsURL)
	if err != nil {
		return
	}
	defer nc.Close()
	if js, err := nc.JetStream(); err == nil {
		_ = js.DeleteStream(stream)
	}
}

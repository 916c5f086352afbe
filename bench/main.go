// Command bench measures writethrough's write path and cache-hit reads
// against their floors, in one run on one machine:
//
//   - PUT of a small JSON document through the API (`writethrough serve
//     --relay=false`) against pgbench running the same SQL one write issues
//     (entity upsert and outbox insert in one transaction), at 8 clients
//     (throughput) and at 1 client (API p50 latency against pgbench's
//     average latency);
//   - a cache-hit GET through the API against a bare net/http handler that
//     does one HMGET of the same key, at 32 connections.
//
// It prints the figures and their ratios. Everything runs on loopback
// against the test services (WT_TEST_DATABASE_URL, WT_TEST_REDIS_URL,
// WT_TEST_NATS_URL), in fresh schemas, key prefixes and streams that are
// removed at the end. `make bench` runs it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

	"github.com/writethrough/writethrough/internal/pgbench"
	"github.com/writethrough/writethrough/internal/testenv"
	"github.com/writethrough/writethrough/migrations"
)

// body is the small JSON document every write puts.
const body = `{"name":"Ada Lovelace","email":"ada@example.com","plan":"pro","active":true,"n":42}`

const collection = "bench"

type options struct {
	duration, warmup time.Duration
	keys             int
	dbURL, redisURL  string
	natsURL          string
	bin              string
	phases           map[string]bool
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var o options
	var baselineAddr, baselineKey string
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "measuring time of each phase")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "warm-up before each phase")
	flag.IntVar(&o.keys, "keys", 100000, "number of distinct keys the writes spread over")
	flag.StringVar(&o.dbURL, "database-url", testenv.DatabaseURL(), "Postgres ($WT_TEST_DATABASE_URL)")
	flag.StringVar(&o.redisURL, "redis-url", testenv.RedisURL(), "Redis ($WT_TEST_REDIS_URL)")
	flag.StringVar(&o.natsURL, "nats-url", testenv.NATSURL(), "NATS ($WT_TEST_NATS_URL)")
	flag.StringVar(&o.bin, "bin", "", "a built writethrough binary to measure (default: build ./cmd/writethrough)")
	flag.StringVar(&baselineAddr, "baseline-addr", "", "internal: serve the bare HMGET handler on this address")
	flag.StringVar(&baselineKey, "baseline-key", "", "internal: the Redis key the bare handler reads")
	phases := flag.String("phases", "put8,put1,get", "the comparisons to run, of put8, put1 and get")
	flag.Parse()
	o.phases = map[string]bool{}
	for _, p := range strings.Split(*phases, ",") {
		switch p = strings.TrimSpace(p); p {
		case "put8", "put1", "get":
			o.phases[p] = true
		default:
			fmt.Fprintf(os.Stderr, "bench: unknown phase %q in -phases (want put8, put1 or get)\n", p)
			os.Exit(2)
		}
	}

	if baselineAddr != "" {
		if err := serveBaseline(ctx, baselineAddr, o.redisURL, baselineKey); err != nil {
			fmt.Fprintln(os.Stderr, "bench baseline:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options, out io.Writer) error {
	if _, err := exec.LookPath("pgbench"); err != nil {
		return errors.New("pgbench not found: install it (apt-get install postgresql-client)")
	}
	dir, err := os.MkdirTemp("", "writethrough-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	bin := o.bin
	if bin == "" {
		fmt.Fprintln(out, "building writethrough ...")
		bin = filepath.Join(dir, "writethrough")
		if err := build(ctx, bin); err != nil {
			return err
		}
	}

	id := testenv.Name("b")
	apiSchema, pgSchema := "wt_bench_api_"+id, "wt_bench_pg_"+id
	prefix := "wtbench" + id + ":"
	stream := "WTBENCH_" + strings.ToUpper(id)
	defer cleanup(o, []string{apiSchema, pgSchema}, prefix, stream)
	for _, s := range []string{apiSchema, pgSchema} {
		if err := migrations.Up(ctx, o.dbURL, s); err != nil {
			return fmt.Errorf("prepare schema %s (is Postgres up? run `make services`): %w", s, err)
		}
	}

	api, err := startProcess(ctx, filepath.Join(dir, "serve.log"), bin, "/readyz", func(addr string) ([]string, []string) {
		return []string{"serve", "--relay=false"}, []string{
			"DATABASE_URL=" + o.dbURL, "WT_DB_SCHEMA=" + apiSchema,
			"REDIS_URL=" + o.redisURL, "WT_REDIS_PREFIX=" + prefix,
			"NATS_URL=" + o.natsURL, "WT_NATS_STREAM=" + stream, "WT_NATS_SUBJECT_PREFIX=wtbench" + id,
			"WT_HTTP_ADDR=" + addr, "WT_LOG_LEVEL=warn",
		}
	})
	if err != nil {
		return fmt.Errorf("start `writethrough serve`: %w", err)
	}
	defer api.stop()

	pg := pgbench.Runner{URL: o.dbURL, Schema: pgSchema, Dir: dir, Keys: o.keys, Collection: collection, Body: body}
	put := func(worker, n int) request {
		return newPut("/v1/"+collection+"/"+randomKey(worker, n, o.keys), body)
	}
	fmt.Fprintf(out, "measuring %s per phase after %s of warm-up; writes spread over %d keys\n\n", o.duration, o.warmup, o.keys)

	var r report
	// Each pair runs back to back so both sides see the same machine.
	for _, clients := range []int{8, 1} {
		if !o.phases["put"+strconv.Itoa(clients)] {
			continue
		}
		if _, err := pg.Run(ctx, clients, o.warmup); err != nil {
			return err
		}
		pgr, err := pg.Run(ctx, clients, o.duration)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "pgbench write   %2d client(s): %s\n", clients, pgr)
		apir, err := load{Conns: clients, Warmup: o.warmup, Duration: o.duration, Target: api.base, Request: put, Check: wantStatus(200, 201)}.run(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "API PUT         %2d client(s): %s\n", clients, apir)
		if apir.Failed > 0 {
			return fmt.Errorf("%d PUTs failed, the first with: %v (see the log of serve)", apir.Failed, apir.FirstErr)
		}
		if clients == 8 {
			r.put8, r.pg8 = apir, pgr
		} else {
			r.put1, r.pg1 = apir, pgr
		}
	}

	if o.phases["get"] {
		if err := r.measureGet(ctx, o, dir, api.base, prefix, out); err != nil {
			return err
		}
	}
	r.print(out)
	return nil
}

// measureGet compares cache-hit reads of one key, written through the API,
// with the bare HMGET handler.
func (r *report) measureGet(ctx context.Context, o options, dir, apiBase, prefix string, out io.Writer) error {
	hot := "/v1/" + collection + "/hot"
	if err := warmKey(ctx, apiBase+hot); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	bare, err := startProcess(ctx, filepath.Join(dir, "bare.log"), self, "/", func(addr string) ([]string, []string) {
		return []string{"-redis-url", o.redisURL, "-baseline-addr", addr, "-baseline-key", prefix + collection + ":hot"}, nil
	})
	if err != nil {
		return fmt.Errorf("start the bare HMGET handler: %w", err)
	}
	defer bare.stop()

	const conns = 32
	get := func(path string) func(int, int) request {
		return func(int, int) request { return request{Method: http.MethodGet, Path: path} }
	}
	bareRes, err := load{Conns: conns, Warmup: o.warmup, Duration: o.duration, Target: bare.base, Request: get("/"), Check: wantStatus(200)}.run(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "bare HMGET GET  %2d conns:     %s\n", conns, bareRes)
	hit := func(status int, h *header) error {
		if status != http.StatusOK || h.Get("X-Cache") != "hit" {
			return fmt.Errorf("status %d, X-Cache %q", status, h.Get("X-Cache"))
		}
		return nil
	}
	apiGet, err := load{Conns: conns, Warmup: o.warmup, Duration: o.duration, Target: apiBase, Request: get(hot), Check: hit}.run(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "API GET (hit)   %2d conns:     %s\n", conns, apiGet)
	for _, res := range []loadResult{bareRes, apiGet} {
		if res.Failed > 0 {
			return fmt.Errorf("%d GETs failed, the first with: %v", res.Failed, res.FirstErr)
		}
	}
	r.get, r.bare = apiGet, bareRes
	return nil
}

// build compiles the service binary from the module this runs in.
func build(ctx context.Context, bin string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/writethrough")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build ./cmd/writethrough (run the bench from the repository root): %w", err)
	}
	return nil
}

// process is a server the bench started on a loopback port.
type process struct {
	cmd  *exec.Cmd
	base string // http://127.0.0.1:port
	done chan error
}

// startProcess starts bin with the arguments and environment argsEnv gives
// for a free loopback address, and waits until readyPath answers 200.
func startProcess(ctx context.Context, logPath, bin, readyPath string, argsEnv func(addr string) (args, env []string)) (*process, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	args, env := argsEnv(addr)
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	p := &process{cmd: cmd, base: "http://" + addr, done: make(chan error, 1)}
	go func() {
		p.done <- cmd.Wait()
		logf.Close()
	}()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-p.done:
			p.done <- err
			log, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("exited (%v): %s", err, strings.TrimSpace(lastLines(string(log), 5)))
		case <-ctx.Done():
			p.stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		resp, err := http.Get(p.base + readyPath)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("%s did not answer 200 within 60s", readyPath)
		}
	}
}

// stop ends the process with SIGTERM, then SIGKILL after 10s.
func (p *process) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
	}
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// newPut is a PUT of a JSON document to path.
func newPut(path, body string) request {
	return request{Method: http.MethodPut, Path: path, Body: body, ContentType: "application/json"}
}

// randomKey picks the id of the n-th write of a worker, uniformly over
// keys as pgbench's random(1, keys) does.
func randomKey(worker, n, keys int) string {
	x := uint64(worker)<<32 ^ uint64(n) ^ seed
	// splitmix64: cheap, and no shared state between workers.
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	x ^= x >> 31
	return strconv.FormatUint(x%uint64(keys)+1, 10)
}

var seed = uint64(time.Now().UnixNano())

// warmKey writes the hot key through the API and checks a read hits the cache.
func warmKey(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, url, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 || resp.Header.Get("X-Cache-Write") != "ok" {
		return fmt.Errorf("PUT of the hot key: status %d, X-Cache-Write %q", resp.StatusCode, resp.Header.Get("X-Cache-Write"))
	}
	resp, err = http.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Cache") != "hit" {
		return fmt.Errorf("GET of the hot key: status %d, X-Cache %q", resp.StatusCode, resp.Header.Get("X-Cache"))
	}
	return nil
}

// cleanup drops the bench's schemas, Redis keys and stream.
func cleanup(o options, schemas []string, prefix, stream string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if conn, err := pgx.Connect(ctx, o.dbURL); err == nil {
		for _, s := range schemas {
			_, _ = conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{s}.Sanitize()+" CASCADE")
		}
		conn.Close(ctx)
	}
	if opt, err := redis.ParseURL(o.redisURL); err == nil {
		rdb := redis.NewClient(opt)
		testenv.DeletePrefix(rdb, prefix)
		rdb.Close()
	}
	if nc, err := nats.Connect(o.natsURL); err == nil {
		if js, err := nc.JetStream(); err == nil {
			_ = js.DeleteStream(stream)
		}
		nc.Close()
	}
}

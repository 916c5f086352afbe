// Package pgbench runs pgbench with the SQL of one write through the writer,
// as the floor the benchmarks compare the API and the relay with.
package pgbench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Script is one write as the writer issues it for a PUT
// (Writer.Put): BEGIN, the entity upsert (writer/store.go putSQL), the
// outbox entry taken from the row it wrote (outboxOfChangeSQL) and COMMIT.
// The writer sends the four in one round trip; pgbench, as a script does,
// sends each and waits for its answer. Collection, id and data are
// parameters in both (-M prepared here).
const Script = `\set id random(1, :keys)
\set part :id % 64
BEGIN;
INSERT INTO entities AS e (collection, id, version, data, deleted, created, updated_at)
VALUES (:collection, :id, 1, :body, false, true, clock_timestamp())
ON CONFLICT (collection, id) DO UPDATE
SET version = e.version + 1, data = excluded.data, deleted = false, created = e.deleted,
    updated_at = greatest(clock_timestamp(), e.updated_at + interval '1 microsecond')
RETURNING version, data::text, updated_at, created;
INSERT INTO outbox (event_id, part, collection, entity_id, version, op, data, committed_at, traceparent, tracestate)
SELECT gen_random_uuid(), :part, e.collection, e.id, e.version, 'put', e.data::json, e.updated_at, NULL, NULL
FROM entities AS e
WHERE e.collection = :collection AND e.id = :id AND e.xmin = pg_current_xact_id()::xid;
COMMIT;
`

// Result is what pgbench reported.
type Result struct {
	TPS     float64
	Latency time.Duration // average
	Failed  int
	// P50 and P99 of the transactions' latencies, from pgbench's log;
	// only from RunAtRate.
	P50, P99 time.Duration
}

func (r Result) String() string {
	return fmt.Sprintf("%.0f tps, latency average %s, %d failed", r.TPS, ms(r.Latency), r.Failed)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond)) }

var (
	tpsLine     = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
	latencyLine = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
	failedLine  = regexp.MustCompile(`(?m)^number of failed transactions: ([0-9]+)`)
)

// Parse reads pgbench's summary.
func Parse(out []byte) (Result, error) {
	var r Result
	m := tpsLine.FindSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("pgbench printed no tps line:\n%s", out)
	}
	r.TPS, _ = strconv.ParseFloat(string(m[1]), 64)
	m = latencyLine.FindSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("pgbench printed no latency line:\n%s", out)
	}
	lat, _ := strconv.ParseFloat(string(m[1]), 64)
	r.Latency = time.Duration(lat * float64(time.Millisecond))
	if m = failedLine.FindSubmatch(out); m != nil {
		r.Failed, _ = strconv.Atoi(string(m[1]))
	}
	return r, nil
}

// Runner runs the write script against Schema in the database at URL.
type Runner struct {
	URL, Schema string
	Dir         string // holds the script and the latency log
	Keys        int    // ids are random(1, Keys)
	Collection  string
	Body        string // the JSON document every write puts
}

// Run runs the script with the given number of clients for d, as fast as
// it goes.
func (p Runner) Run(ctx context.Context, clients int, d time.Duration) (Result, error) {
	return p.run(ctx, clients, d, 0)
}

// RunAtRate runs the script at a steady rate of transactions per second,
// spread over clients, for d, and reads the latency percentiles from
// pgbench's per-transaction log.
func (p Runner) RunAtRate(ctx context.Context, clients, rate int, d time.Duration) (Result, error) {
	return p.run(ctx, clients, d, rate)
}

func (p Runner) run(ctx context.Context, clients int, d time.Duration, rate int) (Result, error) {
	if _, err := exec.LookPath("pgbench"); err != nil {
		return Result{}, errors.New("pgbench not found: install it (apt-get install postgresql-client)")
	}
	script := filepath.Join(p.Dir, "write.sql")
	if err := os.WriteFile(script, []byte(Script), 0o600); err != nil {
		return Result{}, err
	}
	secs := max(1, int(d.Round(time.Second)/time.Second))
	args := []string{
		"--no-vacuum", "--protocol=prepared",
		"--client=" + strconv.Itoa(clients), "--jobs=" + strconv.Itoa(min(clients, 2)),
		"--time=" + strconv.Itoa(secs),
		"--define=keys=" + strconv.Itoa(p.Keys),
		"--define=collection=" + p.Collection,
		"--define=body=" + p.Body,
		"--file=" + script,
	}
	logPrefix := filepath.Join(p.Dir, "latency")
	if rate > 0 {
		args = append(args, "--rate="+strconv.Itoa(rate), "--log", "--log-prefix="+logPrefix)
	}
	cmd := exec.CommandContext(ctx, "pgbench", append(args, p.URL)...)
	cmd.Dir = p.Dir
	cmd.Env = append(os.Environ(), "PGOPTIONS=-c search_path="+p.Schema)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return Result{}, fmt.Errorf("pgbench: %w\n%s", err, out.Bytes())
	}
	r, err := Parse(out.Bytes())
	if err != nil || rate == 0 {
		return r, err
	}
	lat, err := readLatencies(logPrefix)
	if err != nil {
		return r, err
	}
	if len(lat) == 0 {
		return r, errors.New("pgbench logged no transactions")
	}
	slices.Sort(lat)
	r.P50, r.P99 = lat[len(lat)/2], lat[len(lat)*99/100]
	return r, nil
}

// readLatencies reads the transaction latencies (third field, in
// microseconds) of every pgbench log file with the prefix, and removes them.
func readLatencies(prefix string) ([]time.Duration, error) {
	files, err := filepath.Glob(prefix + ".*")
	if err != nil {
		return nil, err
	}
	var lat []time.Duration
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		_ = os.Remove(f)
		for line := range strings.Lines(string(data)) {
			fields := strings.Fields(line)
			if len(fields) < 3 {
				continue
			}
			us, err := strconv.ParseInt(fields[2], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("pgbench log %s: %q: %w", f, line, err)
			}
			lat = append(lat, time.Duration(us)*time.Microsecond)
		}
	}
	return lat, nil
}

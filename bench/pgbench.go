package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"time"
)

// pgbenchScript is one write as the writer issues it for a PUT
// (Writer.Put): BEGIN, the entity upsert (writer/store.go putSQL), the
// outbox entry taken from the row it wrote (outboxOfChangeSQL) and COMMIT.
// The writer sends the four in one round trip; pgbench, as a script does,
// sends each and waits for its answer. Collection, id and data are
// parameters in both (-M prepared here).
const pgbenchScript = `\set id random(1, :keys)
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

// pgbenchResult is what pgbench reported.
type pgbenchResult struct {
	TPS     float64
	Latency time.Duration // average
	Failed  int
}

func (r pgbenchResult) String() string {
	return fmt.Sprintf("%.0f tps, latency average %s, %d failed", r.TPS, ms(r.Latency), r.Failed)
}

var (
	tpsLine     = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
	latencyLine = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
	failedLine  = regexp.MustCompile(`(?m)^number of failed transactions: ([0-9]+)`)
)

// parsePgbench reads pgbench's summary.
func parsePgbench(out []byte) (pgbenchResult, error) {
	var r pgbenchResult
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

// pgbench runs the write script with the given number of clients for d
// against schema in the database at url.
type pgbench struct {
	URL, Schema string
	Dir         string // holds the script
	Keys        int
	Collection  string
	Body        string
}

func (p pgbench) run(ctx context.Context, clients int, d time.Duration) (pgbenchResult, error) {
	script := filepath.Join(p.Dir, "write.sql")
	if err := os.WriteFile(script, []byte(pgbenchScript), 0o600); err != nil {
		return pgbenchResult{}, err
	}
	secs := max(1, int(d.Round(time.Second)/time.Second))
	cmd := exec.CommandContext(ctx, "pgbench",
		"--no-vacuum", "--protocol=prepared",
		"--client="+strconv.Itoa(clients), "--jobs="+strconv.Itoa(min(clients, 2)),
		"--time="+strconv.Itoa(secs),
		"--define=keys="+strconv.Itoa(p.Keys),
		"--define=collection="+p.Collection,
		"--define=body="+p.Body,
		"--file="+script,
		p.URL,
	)
	cmd.Env = append(os.Environ(), "PGOPTIONS=-c search_path="+p.Schema)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return pgbenchResult{}, fmt.Errorf("pgbench: %w\n%s", err, out.Bytes())
	}
	return parsePgbench(out.Bytes())
}

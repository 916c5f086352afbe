package main

import (
	"fmt"
	"io"

	"github.com/writethrough/writethrough/internal/pgbench"
)

// report holds the figures of one run and prints them with their ratios
// against the targets.
type report struct {
	put8, put1 loadResult
	pg8, pg1   pgbench.Result
	get, bare  loadResult
}

type ratio struct {
	name      string
	api, base string
	value     float64
	atLeast   bool // the target is a floor (else a ceiling)
	target    float64
}

func (r ratio) met() bool {
	if r.atLeast {
		return r.value >= r.target
	}
	return r.value <= r.target
}

func (r report) ratios() []ratio {
	return []ratio{
		{
			name: "PUT throughput, 8 clients", atLeast: true, target: 0.8,
			api: fmt.Sprintf("%.0f req/s", r.put8.RPS), base: fmt.Sprintf("%.0f tps", r.pg8.TPS),
			value: r.put8.RPS / r.pg8.TPS,
		},
		{
			name: "PUT latency, 1 client", atLeast: false, target: 1.5,
			api: "p50 " + ms(r.put1.P50), base: "avg " + ms(r.pg1.Latency),
			value: float64(r.put1.P50) / float64(r.pg1.Latency),
		},
		{
			name: "cache-hit GET, 32 connections", atLeast: true, target: 0.8,
			api: fmt.Sprintf("%.0f req/s", r.get.RPS), base: fmt.Sprintf("%.0f req/s", r.bare.RPS),
			value: r.get.RPS / r.bare.RPS,
		},
	}
}

func (r report) print(w io.Writer) {
	fmt.Fprintf(w, "\n%-30s %-18s %-22s %-7s %s\n", "", "API", "floor", "ratio", "target")
	for _, x := range r.ratios() {
		if x.value == 0 || x.value != x.value { // a phase that did not run
			continue
		}
		op := "≥"
		if !x.atLeast {
			op = "≤"
		}
		verdict := "met"
		if !x.met() {
			verdict = "MISSED"
		}
		fmt.Fprintf(w, "%-30s %-18s %-22s %-7.2f %s %.1f %s\n", x.name, x.api, x.base, x.value, op, x.target, verdict)
	}
	fmt.Fprintln(w, "\nfloors: pgbench with the writer's SQL for one write (PUT); a bare net/http handler doing one HMGET (GET)")
}

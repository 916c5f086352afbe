package chaos

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/internal/testenv"
)

// Every knob has a flag and an environment variable (the flag wins):
//
//	-chaos.seeds      WT_CHAOS_SEEDS      comma-separated seeds to run (replay)
//	-chaos.count      WT_CHAOS_COUNT      TestChaosFull: number of seeds (default 20)
//	-chaos.duration   WT_CHAOS_DURATION   TestChaosFull: workload per seed (default 60s)
//	-chaos.visualize  WT_CHAOS_VISUALIZE  directory for porcupine HTML of failures
//	-chaos.keep       WT_CHAOS_KEEP       keep each run's logs (service, redis)
//	-chaos.closing    WT_CHAOS_CLOSING    the closing fault (default redis-cut)
//	-chaos.kinds      WT_CHAOS_KINDS      TestChaosFull: comma-separated fault kinds (default all)
var (
	flagSeeds     = flag.String("chaos.seeds", os.Getenv("WT_CHAOS_SEEDS"), "comma-separated seeds (replay a run)")
	flagCount     = flag.Int("chaos.count", envInt("WT_CHAOS_COUNT", 20), "TestChaosFull: number of seeds")
	flagDuration  = flag.Duration("chaos.duration", envDuration("WT_CHAOS_DURATION", 60*time.Second), "TestChaosFull: workload per seed")
	flagVisualize = flag.String("chaos.visualize", os.Getenv("WT_CHAOS_VISUALIZE"), "write porcupine visualisations of failing histories here")
	flagClosing   = flag.String("chaos.closing", os.Getenv("WT_CHAOS_CLOSING"), "the fault whose heal ends the workload (default redis-cut)")
	flagKinds     = flag.String("chaos.kinds", os.Getenv("WT_CHAOS_KINDS"), "TestChaosFull: comma-separated fault kinds (default all)")
	flagKeep      = flag.Bool("chaos.keep", os.Getenv("WT_CHAOS_KEEP") != "", "keep each run's directory of logs")
)

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return n
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return d
	}
	return def
}

func seeds(def []int64) []int64 {
	if *flagSeeds == "" {
		return def
	}
	var out []int64
	for _, s := range strings.Split(*flagSeeds, ",") {
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil {
			panic(fmt.Sprintf("chaos seeds: %q is not a number", s))
		}
		out = append(out, n)
	}
	return out
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if binaryPath != "" {
		os.RemoveAll(filepath.Dir(binaryPath))
	}
	os.Exit(code)
}

var (
	binaryOnce sync.Once
	binaryPath string
	binaryErr  error
)

// binary builds `writethrough -tags chaos` once per test process.
func binary(t *testing.T) string {
	t.Helper()
	binaryOnce.Do(func() {
		dir, err := os.MkdirTemp("", "wt-chaos-bin-")
		if err != nil {
			binaryErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		binaryPath, binaryErr = BuildBinary(ctx, dir)
	})
	require.NoError(t, binaryErr)
	return binaryPath
}

// runSeed runs one seed and returns its report; the run's directory is
// removed unless the run failed or -chaos.keep.
func runSeed(t *testing.T, cfg Config) *Outcome {
	t.Helper()
	dir, err := os.MkdirTemp("", fmt.Sprintf("wt-chaos-%d-", cfg.Seed))
	require.NoError(t, err)
	cfg.Dir = dir
	cfg.Binary = binary(t)
	cfg.DatabaseURL = testenv.DatabaseURL()
	cfg.NATSURL = testenv.NATSURL()
	cfg.VisualizeDir = *flagVisualize
	if cfg.Closing == "" {
		cfg.Closing = FaultKind(*flagClosing)
	}
	cfg.Logf = t.Logf
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Duration+5*time.Minute)
	defer cancel()
	out, err := Run(ctx, cfg)
	require.NoError(t, err, "run seed %d (logs in %s)", cfg.Seed, dir)
	if *flagKeep || out.Report.Violations() > 0 || t.Failed() {
		t.Logf("seed %d: logs kept in %s", cfg.Seed, dir)
	} else {
		os.RemoveAll(dir)
	}
	return out
}

func printReport(t *testing.T, r *Report) {
	t.Helper()
	var b strings.Builder
	r.WriteTable(&b)
	t.Log("\n" + b.String())
}

// TestChaosShort is the profile inside `make test`: fixed seeds, every
// fault kind at least once, under three minutes.
func TestChaosShort(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos: skipped with -short")
	}
	var total *Report
	for _, seed := range seeds([]int64{3}) {
		out := runSeed(t, Config{Seed: seed, Duration: 45 * time.Second, Keys: 6, Writers: 5})
		if total == nil {
			total = out.Report
		} else {
			total.Merge(out.Report)
		}
	}
	printReport(t, total)
	require.Empty(t, total.MissingFaultKinds(), "every fault kind is injected")
	require.Zero(t, total.Violations(), "violations (the table above names the first of each checker)")
	require.Zero(t, total.ServerErrors, "answers 5xx other than 503 (see the service log of the run)")
	require.Zero(t, total.UnexpectedExits, "the service exited on its own")
}

// TestChaosFull is `make chaos`: at least 20 seeds of at least 60 s each.
func TestChaosFull(t *testing.T) {
	if !chaosTag && os.Getenv("WT_CHAOS_FULL") == "" {
		t.Skip("chaos: the full profile runs with -tags chaos (make chaos) or WT_CHAOS_FULL=1")
	}
	def := make([]int64, *flagCount)
	for i := range def {
		def[i] = int64(1000 + i)
	}
	kinds := AllFaultKinds
	if *flagKinds != "" {
		kinds = nil
		for _, k := range strings.Split(*flagKinds, ",") {
			kinds = append(kinds, FaultKind(strings.TrimSpace(k)))
		}
	}
	var total *Report
	for _, seed := range seeds(def) {
		out := runSeed(t, Config{Seed: seed, Duration: *flagDuration, Kinds: kinds})
		var b strings.Builder
		out.Report.WriteTable(&b)
		t.Logf("seed %d:\n%s", seed, b.String())
		if total == nil {
			total = out.Report
		} else {
			total.Merge(out.Report)
		}
	}
	printReport(t, total)
	if *flagKinds == "" {
		require.Empty(t, total.MissingFaultKinds(), "every fault kind is injected")
	}
	require.Zero(t, total.Violations(), "violations (the table above names the first of each checker)")
	require.Zero(t, total.ServerErrors, "answers 5xx other than 503 (see the service log of the run)")
	require.Zero(t, total.UnexpectedExits, "the service exited on its own")
}

// TestBrokenUnfencedIsCaught runs the real service with its cache writes
// unfenced (WT_BROKEN=unfenced, compiled in only with the chaos tag) and no
// faults at all: older writes and fills land over newer ones, and the
// checkers must say so. A checker that cannot fail is worth nothing.
func TestBrokenUnfencedIsCaught(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos: skipped with -short")
	}
	out := runSeed(t, Config{Seed: 7, Duration: 10 * time.Second, NoFaults: true, Broken: "unfenced", Keys: 3, Writers: 8, Readers: 3, RedisReaders: 3})
	printReport(t, out.Report)
	r := out.Report.Results
	caught := len(r[NameRegression].Violations) + len(r[NameRYW].Violations) + len(r[NameLinear].Violations)
	require.Positive(t, caught, "the unfenced cache write goes unnoticed by the read checkers")
}

// Package chaos is writethrough's consistency suite: a Jepsen-style workload
// runner that drives a real `writethrough serve` process through toxiproxy
// while a seeded plan injects faults (network cuts, latency, connection
// resets, SIGKILL, crash points, a Redis restarted empty), and a set of
// checkers that read the recorded history and prove the promises of
// CONTRACT §4–§5:
//
//   - no regression: per key, the versions readers observe never go back in
//     real time (a miss is allowed);
//   - read-your-acknowledged-write: a read that starts after a write was
//     answered `X-Cache-Write: ok` sees its version or newer, or a miss;
//   - linearizability of the fault-free segments (porcupine, a versioned
//     register per key);
//   - convergence: after the last fault heals, Redis equals Postgres or is
//     absent, within 5 s;
//   - events: one distinct ce-id per committed change, per-key versions in
//     order without gaps, nothing that was not committed;
//   - nothing lost: every write answered 2xx is in Postgres at its version or
//     superseded.
//
// The checkers are pure functions over a History; they are tested with
// hand-made and mutated histories (checkers_test.go) and against the real
// service running a deliberately broken variant, an unfenced cache write
// compiled in only with the chaos build tag (TestBrokenUnfencedIsCaught).
//
// Entry points: TestChaosShort (fixed seed, every fault kind, inside `make
// test`) and TestChaosFull (`make chaos`: 20 seeds of 60 s by default). The
// seed is printed; WT_CHAOS_SEEDS replays one. See chaos_test.go for every
// knob. The crash points (writer-after-commit, writer-after-cache,
// relay-after-publish, relay-after-repair) exist only in a binary built with
// -tags chaos, which the suite builds itself; they are armed by
// WT_CRASHPOINT, WT_CRASHPOINT_PROB and WT_CRASHPOINT_SEED.
//
// The package owns nothing the service imports.
package chaos

package chaos

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// Crash points, one fault kind each.
const (
	FaultCrashWriterAfterCommit FaultKind = "crash:writer-after-commit"
	FaultCrashWriterAfterCache  FaultKind = "crash:writer-after-cache"
	FaultCrashRelayAfterPublish FaultKind = "crash:relay-after-publish"
	FaultCrashRelayAfterRepair  FaultKind = "crash:relay-after-repair"
)

// crashPoint returns the WT_CRASHPOINT name of a crash kind, "" otherwise.
func (k FaultKind) crashPoint() string {
	name, ok := strings.CutPrefix(string(k), "crash:")
	if !ok {
		return ""
	}
	return name
}

// Planned is one fault the plan schedules.
type Planned struct {
	At      time.Duration // from the start of the workload
	Kind    FaultKind
	For     time.Duration // how long it lasts (a down time for kills and restarts)
	Latency time.Duration // slow faults
}

func (p Planned) String() string {
	s := fmt.Sprintf("%6.2fs %-26s for %s", p.At.Seconds(), p.Kind, p.For.Round(time.Millisecond))
	if p.Latency > 0 {
		s += fmt.Sprintf(" latency %s", p.Latency)
	}
	return s
}

// Plan is the seeded schedule of one run.
type Plan struct {
	Seed     int64
	Duration time.Duration
	Faults   []Planned
}

// NewPlan schedules faults over d from seed: every kind in kinds once, in a
// random order, then random kinds while time remains, and last a Redis cut
// whose heal ends the workload. Between faults it
// leaves gaps, some longer than RepairWindow so that fault-free segments
// exist for the linearizability checker. The duration grows if every kind
// does not fit. The same seed gives the same plan.
func NewPlan(seed int64, d time.Duration, kinds []FaultKind) Plan {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x6368616f73))
	between := func(lo, hi time.Duration) time.Duration {
		return lo + time.Duration(rng.Int64N(int64(hi-lo)+1))
	}
	p := Plan{Seed: seed, Duration: d}
	bag := append([]FaultKind(nil), kinds...)
	rng.Shuffle(len(bag), func(i, j int) { bag[i], bag[j] = bag[j], bag[i] })
	t := between(time.Second, 2*time.Second)
	for i := 0; ; i++ {
		var k FaultKind
		if i < len(bag) {
			k = bag[i]
		} else {
			k = kinds[rng.IntN(len(kinds))]
		}
		f := Planned{At: t, Kind: k}
		switch k {
		case FaultRedisCut, FaultNATSCut:
			f.For = between(500*time.Millisecond, 2500*time.Millisecond)
		case FaultRedisSlow, FaultNATSSlow, FaultPGSlow:
			f.For = between(time.Second, 3*time.Second)
			f.Latency = between(50*time.Millisecond, 500*time.Millisecond)
		case FaultRedisReset, FaultNATSReset, FaultPGReset:
			f.For = between(100*time.Millisecond, 600*time.Millisecond)
		case FaultRedisRestart:
			f.For = between(50*time.Millisecond, 500*time.Millisecond)
		case FaultKill:
			f.For = between(0, time.Second)
		case FaultCrashRelayAfterRepair:
			// Redis is cut for a second first, then the relay needs its
			// repair grace and a round.
			f.For = 8 * time.Second
		default: // crash points: how long to wait for the point to fire
			f.For = 3 * time.Second
		}
		end := t + f.For + 1500*time.Millisecond // restarts take time
		if i >= len(bag) && end > d-time.Second {
			break
		}
		p.Faults = append(p.Faults, f)
		gap := between(300*time.Millisecond, 2500*time.Millisecond)
		if rng.IntN(5) == 0 {
			gap = between(RepairWindow+500*time.Millisecond, RepairWindow+3*time.Second)
		}
		t = end + gap
	}
	// The closing fault: Redis cut while the writers run, so writes are left
	// pending; the workload stops when it heals and the convergence clock
	// measures the relay's repair.
	last := p.Faults[len(p.Faults)-1]
	closing := Planned{At: max(t, d-2*time.Second), Kind: FaultRedisCut, For: between(time.Second, 2*time.Second)}
	if closing.At < last.At+last.For+1500*time.Millisecond {
		closing.At = last.At + last.For + 1500*time.Millisecond
	}
	p.Faults = append(p.Faults, closing)
	p.Duration = closing.At + closing.For
	return p
}

func (p Plan) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "plan seed=%d duration=%s faults=%d\n", p.Seed, p.Duration, len(p.Faults))
	for _, f := range p.Faults {
		b.WriteString("  " + f.String() + "\n")
	}
	return b.String()
}

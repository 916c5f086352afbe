package chaos

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Proxy names.
const (
	proxyPG    = "postgres"
	proxyRedis = "redis"
	proxyNATS  = "nats"
)

// crashProb is the chance per pass of each crash point: the write path is
// passed hundreds of times a second, a repair only after a Redis fault.
var crashProb = map[FaultKind]float64{
	FaultCrashWriterAfterCommit: 0.05,
	FaultCrashWriterAfterCache:  0.05,
	FaultCrashRelayAfterPublish: 0.2,
	FaultCrashRelayAfterRepair:  0.5,
}

// injector carries out a plan.
type injector struct {
	h     *History
	px    *proxies
	redis *privateRedis
	svc   *service
	seed  int64
	logf  func(format string, args ...any)
	// unexpected counts service exits nobody caused.
	unexpected int
}

// run injects each planned fault at its time; it returns when the plan is
// done or ctx ends.
func (in *injector) run(ctx context.Context, plan Plan) error {
	for i, pf := range plan.Faults {
		if err := sleepCtx(ctx, time.Duration(int64(pf.At)-in.h.Now())); err != nil {
			return nil
		}
		if err := in.ensureRunning(ctx); err != nil {
			return err
		}
		f, err := in.inject(ctx, i, pf)
		if err != nil {
			return fmt.Errorf("inject %s: %w", pf.Kind, err)
		}
		in.h.AddFault(f)
		in.logf("fault %s", f)
	}
	return in.ensureRunning(ctx)
}

// ensureRunning restarts the service if it died on its own; that is a
// finding in itself (a crash point only fires while the injector waits).
func (in *injector) ensureRunning(ctx context.Context) error {
	if in.svc.running() != nil {
		return nil
	}
	in.unexpected++
	in.logf("service exited unexpectedly at %s; restarting (see service.log)", fmtTime(in.h.Now()))
	start := in.h.Now()
	if err := in.restart(ctx); err != nil {
		return err
	}
	in.h.AddFault(Fault{Kind: FaultKill, Detail: "unexpected exit", Start: start, End: in.h.Now()})
	return nil
}

// restart starts the service without crash points, retrying while it fails
// to come up (e.g. Postgres still slow).
func (in *injector) restart(ctx context.Context) error {
	var err error
	for range 5 {
		if err = in.svc.start(ctx); err == nil || ctx.Err() != nil {
			return err
		}
		in.svc.kill()
	}
	return err
}

func (in *injector) inject(ctx context.Context, i int, pf Planned) (Fault, error) {
	f := Fault{Kind: pf.Kind, Start: in.h.Now()}
	var err error
	hold := func() { _ = sleepCtx(ctx, pf.For) }
	switch pf.Kind {
	case FaultRedisCut, FaultNATSCut:
		name := proxyFor(pf.Kind)
		in.px.cut(name)
		hold()
		err = in.px.heal(name)
	case FaultRedisSlow, FaultNATSSlow, FaultPGSlow:
		name := proxyFor(pf.Kind)
		f.Detail = "latency " + pf.Latency.String()
		if err = in.px.toxic(name, "latency", fmt.Sprintf(`{"latency":%d,"jitter":%d}`, pf.Latency.Milliseconds(), pf.Latency.Milliseconds()/4)); err == nil {
			hold()
			err = in.px.removeToxic(name, "latency")
		}
	case FaultRedisReset, FaultNATSReset, FaultPGReset:
		name := proxyFor(pf.Kind)
		if err = in.px.toxic(name, "reset_peer", `{"timeout":0}`); err == nil {
			hold()
			err = in.px.removeToxic(name, "reset_peer")
		}
	case FaultRedisRestart:
		err = in.redis.restartEmpty(pf.For)
	case FaultKill:
		in.svc.kill()
		hold()
		err = in.restart(ctx)
	default:
		f.Detail, err = in.crash(ctx, i, pf)
		if err == nil {
			err = in.restart(ctx)
		}
	}
	f.End = in.h.Now()
	return f, err
}

// crash restarts the service with a crash point armed and waits for it to
// fire. relay-after-repair needs repairs to do, so Redis is cut for a
// moment first: the writes answered pending are what the relay repairs.
func (in *injector) crash(ctx context.Context, i int, pf Planned) (string, error) {
	point := pf.Kind.crashPoint()
	// A graceful stop hands the relay's leases over at once; after a kill the
	// new relay would wait out the lease TTL and the point could not fire.
	in.svc.terminate()
	err := in.svc.start(ctx,
		"WT_CRASHPOINT="+point,
		"WT_CRASHPOINT_PROB="+strconv.FormatFloat(crashProb[pf.Kind], 'f', -1, 64),
		"WT_CRASHPOINT_SEED="+strconv.FormatInt(in.seed*1000+int64(i), 10))
	if err != nil && !errors.Is(err, errExited) {
		return "", err
	}
	done := in.svc.running()
	if done == nil {
		return point + " fired", nil
	}
	if pf.Kind == FaultCrashRelayAfterRepair {
		in.px.cut(proxyRedis)
		_ = sleepCtx(ctx, time.Second)
		if err := in.px.heal(proxyRedis); err != nil {
			return "", err
		}
	}
	select {
	case <-done:
		return point + " fired", nil
	case <-time.After(pf.For):
		in.svc.kill()
		return point + " did not fire", nil
	case <-ctx.Done():
		in.svc.kill()
		return point + " cut short", nil
	}
}

func proxyFor(k FaultKind) string {
	switch k {
	case FaultRedisCut, FaultRedisSlow, FaultRedisReset:
		return proxyRedis
	case FaultNATSCut, FaultNATSSlow, FaultNATSReset:
		return proxyNATS
	default:
		return proxyPG
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/writethrough/writethrough/internal/cloudevent"
	"github.com/writethrough/writethrough/internal/verify"
	"github.com/writethrough/writethrough/outbox"
)

func init() {
	register("outbox replay", "re-publish events and/or re-warm the cache for a time range, collection or key", outboxReplay)
}

// Replay extension attributes (CloudEvents extensions are lower-case
// alphanumerics). A replayed event keeps its ce-id and body; these mark it.
const (
	headerReplay   = "ce-replay"
	headerReplayID = "ce-replayid"
)

// replayMsg is the event of e marked as a replay of run: the original
// headers and body, plus the replay extensions, and a Nats-Msg-Id of its own
// so JetStream's dedup lets it through (once per run).
func replayMsg(e *outbox.Entry, source, subjectPrefix, run string) *nats.Msg {
	m := cloudevent.Encode(e, source, subjectPrefix)
	m.Header[headerReplay] = []string{"true"}
	m.Header[headerReplayID] = []string{run}
	m.Header[cloudevent.HeaderMsgID] = []string{e.EventID.String() + ":replay:" + run}
	return m
}

// replayReport is what `outbox replay` did (or, dry, would do).
type replayReport struct {
	ReplayID string                `json:"replay_id"`
	DryRun   bool                  `json:"dry_run"`
	Events   *replayedEvents       `json:"events,omitempty"`
	Cache    *verify.RefreshReport `json:"cache,omitempty"`
}

// replayedEvents counts the events half of a replay.
type replayedEvents struct {
	Selected  int64 `json:"selected"`
	Published int64 `json:"published"`
	// Duplicates were already published by an earlier run with the same
	// --replay-id (JetStream dropped them).
	Duplicates int64 `json:"duplicates"`
}

func outboxReplay(ctx context.Context, c *cli, args []string) int {
	const name = "outbox replay"
	fs := c.flags(name)
	ff := bindFilter(fs, "commit time (for --cache: the entity's last change)", false)
	events := fs.Bool("events", false, "re-publish the selected events (default: both targets)")
	cache := fs.Bool("cache", false, "re-warm the cache from the current rows of the selected entities (default: both targets)")
	dryRun := fs.Bool("dry-run", false, "only count what would be replayed")
	replayID := fs.String("replay-id", "", "id of this replay (default a new UUID); running again with the same id publishes nothing twice within the stream's duplicate window")
	window := fs.Int("window", 256, "events in flight at once")
	asJSON := fs.Bool("json", false, "print JSON")
	cfg, code := c.parse(fs, args)
	if cfg == nil {
		return code
	}
	f, ok := ff.filter(c, name)
	if !ok {
		return exitUsage
	}
	if f.Since.IsZero() && f.Until.IsZero() && f.Collection == "" {
		fmt.Fprintf(c.stderr, "writethrough %s: select what to replay with --since/--until, --collection or --key\n", name)
		return exitUsage
	}
	if *window <= 0 || *window > 10000 {
		fmt.Fprintf(c.stderr, "writethrough %s: --window must be between 1 and 10000\n", name)
		return exitUsage
	}
	if !*events && !*cache {
		*events, *cache = true, true
	}
	run := *replayID
	if run == "" {
		run = uuid.NewString()
	}
	d, err := c.connect(ctx, cfg)
	if err != nil {
		return c.fail("%s: %v", name, err)
	}
	defer d.close()

	rep := &replayReport{ReplayID: run, DryRun: *dryRun}
	if *events {
		if err := c.replayEvents(ctx, d, f, run, *window, *dryRun, *asJSON, rep); err != nil {
			return c.fail("%s: %v", name, redact(err))
		}
	}
	if *cache {
		rc := verify.RefreshConfig{Pool: d.pool, Fence: d.fence, Collection: f.Collection, ID: f.EntityID, Since: f.Since, Until: f.Until, DryRun: *dryRun}
		var bar *progress
		if !*asJSON && !*dryRun && isTerminal(c.stdout) {
			total, err := verify.CountRefresh(ctx, rc)
			if err != nil {
				return c.fail("%s: %v", name, redact(err))
			}
			bar = c.newProgress("cache", total)
			rc.Progress = bar.Set
		}
		rep.Cache, err = verify.Refresh(ctx, rc)
		bar.Done()
		if err != nil {
			return c.fail("%s: cache: %v", name, redact(err))
		}
	}
	if *asJSON {
		return c.printJSON(rep)
	}
	if ev := rep.Events; ev != nil {
		if *dryRun {
			fmt.Fprintf(c.stdout, "events: would re-publish %d events\n", ev.Selected)
		} else {
			fmt.Fprintf(c.stdout, "events: re-published %d of %d selected events (%d already published by this replay id)\n", ev.Published, ev.Selected, ev.Duplicates)
		}
	}
	if cr := rep.Cache; cr != nil {
		if *dryRun {
			fmt.Fprintf(c.stdout, "cache: would refresh %d keys from their current rows\n", cr.Selected)
		} else {
			fmt.Fprintf(c.stdout, "cache: refreshed %d keys from their current rows (%d written, %d already current or newer)\n", cr.Selected, cr.Applied, cr.FencedOut)
		}
	}
	fmt.Fprintf(c.stdout, "replay id %s\n", run)
	return exitOK
}

// replayEvents publishes the selected entries asynchronously with at most
// window in flight, in seq order (a key's events stay in version order).
func (c *cli) replayEvents(ctx context.Context, d *deps, f outbox.Filter, run string, window int, dryRun, asJSON bool, rep *replayReport) error {
	total, err := outbox.CountReplay(ctx, d.pool, f)
	if err != nil {
		return err
	}
	rep.Events = &replayedEvents{Selected: total}
	if dryRun || total == 0 {
		return nil
	}
	if err := d.connectNATS(); err != nil {
		return err
	}
	js, err := jetstream.New(d.nc, jetstream.WithPublishAsyncMaxPending(window))
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = js.Stream(sctx, d.cfg.Stream)
	cancel()
	if err != nil {
		return fmt.Errorf("stream %s (WT_NATS_STREAM): %w", d.cfg.Stream, err)
	}
	var bar *progress
	if !asJSON {
		bar = c.newProgress("events", total)
	}
	defer bar.Done()

	var futures []jetstream.PubAckFuture
	settle := func() error {
		for _, fut := range futures {
			select {
			case ack := <-fut.Ok():
				if ack.Duplicate {
					rep.Events.Duplicates++
				} else {
					rep.Events.Published++
				}
			case err := <-fut.Err():
				return fmt.Errorf("publish %s: %w", fut.Msg().Header.Get(cloudevent.HeaderID), err)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		futures = futures[:0]
		return nil
	}
	var after int64
	var done int64
	for {
		batch, err := outbox.ReplayBatch(ctx, d.pool, f, after, 500)
		if err != nil {
			return err
		}
		if len(batch) == 0 {
			break
		}
		after = batch[len(batch)-1].Seq
		for _, e := range batch {
			m := replayMsg(e, d.cfg.EventSource, d.cfg.SubjectPrefix, run)
			fut, err := js.PublishMsgAsync(m, jetstream.WithExpectStream(d.cfg.Stream))
			if err != nil {
				return fmt.Errorf("publish %s: %w", e.EventID, err)
			}
			futures = append(futures, fut)
			if len(futures) >= window {
				if err := settle(); err != nil {
					return err
				}
			}
			done++
		}
		bar.Set(done)
	}
	if err := settle(); err != nil {
		return err
	}
	if rep.Events.Published+rep.Events.Duplicates == 0 && total > 0 {
		return errors.New("nothing was acknowledged")
	}
	return nil
}

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
	// Skipped could not be published on their own (dead letters, such as
	// an event over the server's max payload); SkippedEvents lists them.
	Skipped       int64          `json:"skipped"`
	SkippedEvents []skippedEvent `json:"skipped_events,omitempty"`
}

// skippedEvent is one event a replay could not publish.
type skippedEvent struct {
	ID         string `json:"id"`
	Seq        int64  `json:"seq"`
	Collection string `json:"collection"`
	EntityID   string `json:"key"`
	Version    int64  `json:"version"`
	Error      string `json:"error"`
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
	if code := c.printReplay(rep, *asJSON); code != exitOK {
		return code
	}
	return c.reportSkipped(name, rep.Events)
}

// printReplay prints the report on stdout.
func (c *cli) printReplay(rep *replayReport, asJSON bool) int {
	if asJSON {
		return c.printJSON(rep)
	}
	if ev := rep.Events; ev != nil {
		switch {
		case rep.DryRun:
			fmt.Fprintf(c.stdout, "events: would re-publish %d events\n", ev.Selected)
		case ev.Skipped > 0:
			fmt.Fprintf(c.stdout, "events: re-published %d of %d selected events (%d already published by this replay id, %d skipped)\n", ev.Published, ev.Selected, ev.Duplicates, ev.Skipped)
		default:
			fmt.Fprintf(c.stdout, "events: re-published %d of %d selected events (%d already published by this replay id)\n", ev.Published, ev.Selected, ev.Duplicates)
		}
	}
	if cr := rep.Cache; cr != nil {
		if rep.DryRun {
			fmt.Fprintf(c.stdout, "cache: would refresh %d keys from their current rows\n", cr.Selected)
		} else {
			fmt.Fprintf(c.stdout, "cache: refreshed %d keys from their current rows (%d written, %d already current or newer)\n", cr.Selected, cr.Applied, cr.FencedOut)
		}
	}
	fmt.Fprintf(c.stdout, "replay id %s\n", rep.ReplayID)
	return exitOK
}

// reportSkipped names on stderr each event the replay skipped and returns
// exit status 1 if there were any.
func (c *cli) reportSkipped(name string, ev *replayedEvents) int {
	if ev == nil || ev.Skipped == 0 {
		return exitOK
	}
	for _, s := range ev.SkippedEvents {
		fmt.Fprintf(c.stderr, "writethrough %s: skipped event %s (%s/%s v%d, seq %d): %s\n", name, s.ID, s.Collection, s.EntityID, s.Version, s.Seq, s.Error)
	}
	if more := ev.Skipped - int64(len(ev.SkippedEvents)); more > 0 {
		fmt.Fprintf(c.stderr, "writethrough %s: ... and %d more\n", name, more)
	}
	return c.fail("%s: skipped %d events that cannot be published on their own", name, ev.Skipped)
}

// maxListedSkips bounds the skipped events a report lists; the count is
// always complete.
const maxListedSkips = 1000

// replayEvents publishes the selected entries asynchronously with at most
// window in flight, in seq order (a key's events stay in version order).
// An event the broker refuses on its own (a dead letter: over the server's
// max payload or the stream's maximum message size) is skipped and recorded
// in rep; any other failure, such as a lost connection, stops the run.
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
	// The ack timeout ends a run whose broker went silent instead of
	// waiting for it forever; a timeout is an outage, not a skip.
	js, err := jetstream.New(d.nc, jetstream.WithPublishAsyncMaxPending(window), jetstream.WithPublishAsyncTimeout(30*time.Second))
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

	ev := rep.Events
	skip := func(e *outbox.Entry, err error) {
		ev.Skipped++
		if len(ev.SkippedEvents) < maxListedSkips {
			ev.SkippedEvents = append(ev.SkippedEvents, skippedEvent{
				ID: e.EventID.String(), Seq: e.Seq, Collection: e.Collection, EntityID: e.EntityID,
				Version: e.Version, Error: err.Error(),
			})
		}
	}
	type inFlight struct {
		e   *outbox.Entry
		fut jetstream.PubAckFuture
	}
	var flights []inFlight
	settle := func() error {
		for _, fl := range flights {
			select {
			case ack := <-fl.fut.Ok():
				if ack.Duplicate {
					ev.Duplicates++
				} else {
					ev.Published++
				}
			case err := <-fl.fut.Err():
				if !refusedOnItsOwn(err) {
					return fmt.Errorf("publish %s: %w", fl.e.EventID, err)
				}
				skip(fl.e, err)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		flights = flights[:0]
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
			// A message published while the connection is down would only
			// wait in the reconnect buffer.
			if st := d.nc.Status(); st != nats.CONNECTED {
				return fmt.Errorf("publish %s: NATS connection is %s", e.EventID, st)
			}
			m := replayMsg(e, d.cfg.EventSource, d.cfg.SubjectPrefix, run)
			fut, err := js.PublishMsgAsync(m, jetstream.WithExpectStream(d.cfg.Stream))
			switch {
			case err == nil:
				flights = append(flights, inFlight{e, fut})
			case refusedOnItsOwn(err):
				skip(e, err)
			default:
				return fmt.Errorf("publish %s: %w", e.EventID, err)
			}
			if len(flights) >= window {
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
	if ev.Published+ev.Duplicates+ev.Skipped == 0 && total > 0 {
		return errors.New("nothing was acknowledged")
	}
	return nil
}

// refusedOnItsOwn reports whether a publish error is about the message
// itself, so publishing it again can never succeed while the next event
// may: the relay makes such an event a dead letter at once. Everything
// else (a lost connection, a timeout, a missing stream) concerns every
// event and stops a replay.
func refusedOnItsOwn(err error) bool {
	if errors.Is(err, nats.ErrMaxPayload) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum
}

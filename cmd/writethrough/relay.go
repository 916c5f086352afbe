package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/writethrough/writethrough/relay"
)

func init() {
	register("relay", "run the outbox relay only: repair the cache and publish events", relayCmd)
}

// relayCmd runs a relay until SIGINT/SIGTERM, then stops it gracefully: the
// round in progress finishes and the leases are released for the others.
func relayCmd(ctx context.Context, c *cli, args []string) int {
	fs := c.flags("relay")
	rf := bindRelayFlags(fs, c.getenv)
	cfg, code := c.parse(fs, args)
	if cfg == nil {
		return code
	}
	if !rf.valid(c) {
		return exitUsage
	}
	d, err := c.connect(ctx, cfg)
	if err != nil {
		return c.fail("relay: %v", err)
	}
	defer d.close()
	if err := d.connectNATS(); err != nil {
		return c.fail("relay: %v", err)
	}
	r, err := startRelay(ctx, d, rf)
	if err != nil {
		return c.fail("relay: %v", redact(err))
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.Stop(sctx); err != nil {
		return c.fail("relay: stop: %v", redact(err))
	}
	return exitOK
}

// relayFlags are the relay's settings on the command line of relay and
// serve, each defaulting to its environment variable.
type relayFlags struct {
	duplicateWindow, pollInterval, retention, maxAttempts string
}

// relayFlag is one of them: its flag, variable, default and usage.
type relayFlag struct {
	dst                   *string
	name, env, def, usage string
}

func (rf *relayFlags) list() []relayFlag {
	return []relayFlag{
		{&rf.duplicateWindow, "duplicate-window", "WT_NATS_DUPLICATE_WINDOW", "2m",
			"JetStream duplicate window set on the stream at start: a re-publish of an event within it is dropped; consumers dedupe by ce-id beyond it"},
		{&rf.maxAttempts, "max-attempts", "WT_RELAY_MAX_ATTEMPTS", "10",
			"failed publishes of one event before it becomes a dead letter (broker outages do not count)"},
		{&rf.pollInterval, "poll-interval", "WT_RELAY_POLL_INTERVAL", "500ms",
			"how often the relay looks for work when no notification arrives"},
		{&rf.retention, "retention", "WT_OUTBOX_RETENTION", "72h",
			"how long finished outbox entries are kept before the relay prunes them"},
	}
}

func bindRelayFlags(fs *flag.FlagSet, getenv func(string) string) *relayFlags {
	rf := &relayFlags{}
	for _, f := range rf.list() {
		fs.StringVar(f.dst, f.name, cmp.Or(strings.TrimSpace(getenv(f.env)), f.def), f.usage+" ($"+f.env+")")
	}
	return rf
}

// valid reports whether every value parses, printing one line naming the
// first bad one.
func (rf *relayFlags) valid(c *cli) bool {
	for _, f := range rf.list() {
		var err error
		if f.name == "max-attempts" {
			if n, perr := strconv.Atoi(*f.dst); perr != nil || n < 1 {
				err = fmt.Errorf("must be a whole number of at least 1, got %q", *f.dst)
			}
		} else if d, perr := time.ParseDuration(*f.dst); perr != nil || d <= 0 {
			err = fmt.Errorf("must be a positive duration, got %q", *f.dst)
		}
		if err != nil {
			fmt.Fprintf(c.stderr, "writethrough: bad configuration: --%s ($%s): %v\n", f.name, f.env, err)
			return false
		}
	}
	return true
}

// config fills the relay settings of rc (valid was checked).
func (rf *relayFlags) config(rc *relay.Config) {
	rc.DuplicateWindow, _ = time.ParseDuration(rf.duplicateWindow)
	rc.PollInterval, _ = time.ParseDuration(rf.pollInterval)
	rc.Retention, _ = time.ParseDuration(rf.retention)
	rc.MaxAttempts, _ = strconv.Atoi(rf.maxAttempts)
}

// startRelay starts the relay over d (d.nc is connected) and returns a
// function that stops it gracefully. serve calls it unless --relay=false.
func startRelay(ctx context.Context, d *deps, rf *relayFlags) (*relay.Relay, error) {
	rc := relay.Config{
		Pool:           d.pool,
		Fence:          d.fence,
		NATS:           d.nc,
		Stream:         d.cfg.Stream,
		SubjectPrefix:  d.cfg.SubjectPrefix,
		Source:         d.cfg.EventSource,
		Logger:         d.tel.Logger,
		MeterProvider:  d.tel.MeterProvider,
		TracerProvider: d.tel.TracerProvider,
	}
	rf.config(&rc)
	r, err := relay.New(rc)
	if err != nil {
		return nil, err
	}
	if err := r.Start(ctx); err != nil {
		return nil, fmt.Errorf("start relay: %w", err)
	}
	return r, nil
}

package main

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/writethrough/writethrough/outbox"
)

func init() {
	register("outbox prune", "delete finished outbox entries past retention", outboxPrune)
}

func outboxPrune(ctx context.Context, c *cli, args []string) int {
	const name = "outbox prune"
	fs := c.flags(name)
	ret := retentionSetting()
	olderThan := fs.String("older-than", "", "delete finished entries committed longer ago than this (default the relay's --retention: $"+ret.env+", else "+ret.def+")")
	batch := fs.Int("batch", 1000, "entries deleted per statement")
	dryRun := fs.Bool("dry-run", false, "only count what would be deleted")
	asJSON := fs.Bool("json", false, "print JSON")
	cfg, code := c.parse(fs, args)
	if cfg == nil {
		return code
	}
	age, ok := c.pruneAge(name, *olderThan, ret)
	if !ok {
		return exitUsage
	}
	if *batch <= 0 || *batch > 100000 {
		fmt.Fprintf(c.stderr, "writethrough %s: --batch must be between 1 and 100000\n", name)
		return exitUsage
	}
	d, err := c.connect(ctx, cfg)
	if err != nil {
		return c.fail("%s: %v", name, err)
	}
	defer d.close()
	cutoff := time.Now().Add(-age)
	total, err := outbox.CountFinished(ctx, d.pool, cutoff)
	if err != nil {
		return c.fail("%s: %v", name, redact(err))
	}
	n := total
	if !*dryRun && total > 0 {
		bar := c.newProgress(name, total)
		if *asJSON {
			bar = nil
		}
		n, err = outbox.PruneFinished(ctx, d.pool, cutoff, *batch, bar.Set)
		bar.Done()
		if err != nil {
			return c.fail("%s: deleted %d entries, then: %v", name, n, redact(err))
		}
	}
	if *asJSON {
		return c.printJSON(struct {
			Cutoff  time.Time `json:"cutoff"`
			Deleted int64     `json:"deleted"`
			DryRun  bool      `json:"dry_run"`
		}{cutoff.UTC(), n, *dryRun})
	}
	verb := "deleted"
	if *dryRun {
		verb = "would delete"
	}
	fmt.Fprintf(c.stdout, "%s %d finished entries committed before %s\n", verb, n, cutoff.UTC().Format(time.RFC3339))
	return exitOK
}

// retentionSetting is the relay's retention (relay and serve --retention):
// its variable and default, which prune shares so that both keep the same.
func retentionSetting() relayFlag {
	for _, f := range (&relayFlags{}).list() {
		if f.name == "retention" {
			return f
		}
	}
	panic("the relay has no retention setting")
}

// pruneAge returns --older-than, or when it is not given the relay's
// retention from its variable, printing one line when the value is bad.
func (c *cli) pruneAge(name, flagValue string, ret relayFlag) (time.Duration, bool) {
	if flagValue != "" {
		d, err := time.ParseDuration(flagValue)
		if err != nil || d < 0 {
			fmt.Fprintf(c.stderr, "writethrough %s: --older-than must be a duration that is not negative, such as 72h, got %q\n", name, flagValue)
			return 0, false
		}
		return d, true
	}
	v := cmp.Or(strings.TrimSpace(c.getenv(ret.env)), ret.def)
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		// The relay refuses the same value.
		fmt.Fprintf(c.stderr, "writethrough: bad configuration: $%s: must be a positive duration, got %q\n", ret.env, v)
		return 0, false
	}
	return d, true
}

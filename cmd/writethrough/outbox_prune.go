package main

import (
	"context"
	"fmt"
	"time"

	"github.com/writethrough/writethrough/outbox"
)

func init() {
	register("outbox prune", "delete finished outbox entries past retention", outboxPrune)
}

func outboxPrune(ctx context.Context, c *cli, args []string) int {
	const name = "outbox prune"
	fs := c.flags(name)
	olderThan := fs.Duration("older-than", 72*time.Hour, "delete finished entries committed longer ago than this")
	batch := fs.Int("batch", 1000, "entries deleted per statement")
	dryRun := fs.Bool("dry-run", false, "only count what would be deleted")
	asJSON := fs.Bool("json", false, "print JSON")
	cfg, code := c.parse(fs, args)
	if cfg == nil {
		return code
	}
	if *olderThan < 0 {
		fmt.Fprintf(c.stderr, "writethrough %s: --older-than must not be negative\n", name)
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
	cutoff := time.Now().Add(-*olderThan)
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

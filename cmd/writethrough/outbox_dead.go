package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/writethrough/writethrough/outbox"
)

func init() {
	register("outbox dead list", "list dead letters (events the relay gave up on)", outboxDeadList)
	register("outbox dead retry", "send dead letters back to the relay, in per-key order", outboxDeadRetry)
}

func outboxDeadList(ctx context.Context, c *cli, args []string) int {
	const name = "outbox dead list"
	fs := c.flags(name)
	ff := bindFilter(fs, "dead time", true)
	limit := fs.Int("limit", 1000, "print at most this many dead letters")
	asJSON := fs.Bool("json", false, "print JSON")
	cfg, code := c.parse(fs, args)
	if cfg == nil {
		return code
	}
	f, ok := ff.filter(c, name)
	if !ok {
		return exitUsage
	}
	if *limit <= 0 {
		fmt.Fprintf(c.stderr, "writethrough %s: --limit must be positive\n", name)
		return exitUsage
	}
	d, err := c.connect(ctx, cfg)
	if err != nil {
		return c.fail("%s: %v", name, err)
	}
	defer d.close()
	list, err := outbox.ListDead(ctx, d.pool, f, *limit)
	if err != nil {
		return c.fail("%s: %v", name, redact(err))
	}
	total, err := outbox.CountDead(ctx, d.pool, f)
	if err != nil {
		return c.fail("%s: %v", name, redact(err))
	}
	if *asJSON {
		return c.printJSON(struct {
			Total int64               `json:"total"`
			Dead  []outbox.DeadLetter `json:"dead"`
		}{total, list})
	}
	if total == 0 {
		fmt.Fprintln(c.stdout, "no dead letters")
		return exitOK
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tDEAD AT\tKEY\tVERSION\tOP\tATTEMPTS\tEVENT ID\tLAST ERROR")
	for _, e := range list {
		fmt.Fprintf(tw, "%d\t%s\t%s/%s\t%d\t%s\t%d\t%s\t%s\n", e.Seq, e.DeadAt.UTC().Format(time.RFC3339), e.Collection, e.EntityID,
			e.Version, e.Op, e.Attempts, e.EventID, oneLine(e.LastError, 80))
	}
	tw.Flush()
	if total > int64(len(list)) {
		fmt.Fprintf(c.stdout, "%d of %d dead letters shown (--limit)\n", len(list), total)
	} else {
		fmt.Fprintf(c.stdout, "%d dead letters\n", total)
	}
	return exitOK
}

func outboxDeadRetry(ctx context.Context, c *cli, args []string) int {
	const name = "outbox dead retry"
	fs := c.flags(name)
	ff := bindFilter(fs, "dead time", true)
	dryRun := fs.Bool("dry-run", false, "only count what would be retried")
	asJSON := fs.Bool("json", false, "print JSON")
	cfg, code := c.parse(fs, args)
	if cfg == nil {
		return code
	}
	f, ok := ff.filter(c, name)
	if !ok {
		return exitUsage
	}
	d, err := c.connect(ctx, cfg)
	if err != nil {
		return c.fail("%s: %v", name, err)
	}
	defer d.close()
	var n int64
	if *dryRun {
		n, err = outbox.CountDead(ctx, d.pool, f)
	} else {
		n, err = outbox.RetryDead(ctx, d.pool, f)
	}
	if err != nil {
		return c.fail("%s: %v", name, redact(err))
	}
	if *asJSON {
		return c.printJSON(struct {
			Queued int64 `json:"queued"`
			DryRun bool  `json:"dry_run"`
		}{n, *dryRun})
	}
	if *dryRun {
		fmt.Fprintf(c.stdout, "would queue %d dead letters for another attempt\n", n)
	} else {
		fmt.Fprintf(c.stdout, "queued %d dead letters for another attempt; the relay publishes each key's entries in order\n", n)
	}
	return exitOK
}

// oneLine shortens s to max runes on one line.
func oneLine(s string, max int) string {
	r := []rune(s)
	for i, c := range r {
		if c == '\n' || c == '\r' || c == '\t' {
			r[i] = ' '
		}
	}
	if len(r) > max {
		return string(r[:max-1]) + "…"
	}
	return string(r)
}

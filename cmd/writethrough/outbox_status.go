package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/writethrough/writethrough/outbox"
)

func init() {
	register("outbox status", "pending, retrying, dead and finished counts; lag per partition; relays alive", outboxStatus)
}

func outboxStatus(ctx context.Context, c *cli, args []string) int {
	const name = "outbox status"
	fs := c.flags(name)
	asJSON := fs.Bool("json", false, "print JSON")
	alive := fs.Duration("alive-within", 15*time.Second, "a relay counts as alive when it heartbeat within this")
	all := fs.Bool("all", false, "list every partition, not only those with due entries")
	cfg, code := c.parse(fs, args)
	if cfg == nil {
		return code
	}
	if *alive <= 0 {
		fmt.Fprintf(c.stderr, "writethrough %s: --alive-within must be positive\n", name)
		return exitUsage
	}
	d, err := c.connect(ctx, cfg)
	if err != nil {
		return c.fail("%s: %v", name, err)
	}
	defer d.close()
	st, err := outbox.ReadStatus(ctx, d.pool, *alive)
	if err != nil {
		return c.fail("%s: %v", name, redact(err))
	}
	if *asJSON {
		type part struct {
			outbox.PartitionStatus
			LagSeconds float64 `json:"lag_seconds"`
		}
		out := struct {
			*outbox.Status
			OldestDueAgeSeconds float64 `json:"oldest_due_age_seconds"`
			Partitions          []part  `json:"partitions"`
		}{Status: st, OldestDueAgeSeconds: age(st.Now, st.OldestDue).Seconds(), Partitions: []part{}}
		for _, p := range st.Partitions {
			out.Partitions = append(out.Partitions, part{p, age(st.Now, p.OldestDue).Seconds()})
		}
		return c.printJSON(out)
	}
	fmt.Fprintf(c.stdout, "pending %d  retrying %d  dead %d  finished %d\n", st.Pending, st.Retrying, st.Dead, st.Finished)
	if st.OldestDue.IsZero() {
		fmt.Fprintln(c.stdout, "oldest due entry: none (caught up)")
	} else {
		fmt.Fprintf(c.stdout, "oldest due entry: %s old (committed %s)\n", roundAge(age(st.Now, st.OldestDue)), st.OldestDue.UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(c.stdout, "relays alive: %d\n", len(st.Relays))
	if len(st.Relays) > 0 {
		tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  RELAY\tHOST\tPID\tSTARTED\tLAST HEARTBEAT")
		for _, r := range st.Relays {
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%s ago\n", r.ID, r.Hostname, r.PID, r.StartedAt.UTC().Format(time.RFC3339), roundAge(age(st.Now, r.HeartbeatAt)))
		}
		tw.Flush()
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PART\tDUE\tLAG\tOWNER\tEPOCH\tLEASE LEFT")
	shown, unowned := 0, 0
	for _, p := range st.Partitions {
		if p.Owner == "" {
			unowned++
		}
		if !*all && p.Due == 0 {
			continue
		}
		shown++
		lag, owner, left := "-", p.Owner, "-"
		if !p.OldestDue.IsZero() {
			lag = roundAge(age(st.Now, p.OldestDue))
		}
		if owner == "" {
			owner = "(none)"
		} else {
			left = roundAge(p.LeaseUntil.Sub(st.Now))
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%d\t%s\n", p.Part, p.Due, lag, owner, p.Epoch, left)
	}
	if shown > 0 {
		tw.Flush()
	} else {
		fmt.Fprintln(c.stdout, "no partition has due entries (--all lists them all)")
	}
	if unowned > 0 {
		fmt.Fprintf(c.stdout, "%d of %d partitions have no live lease\n", unowned, len(st.Partitions))
	}
	return exitOK
}

// age is now - t, 0 for a zero t.
func age(now, t time.Time) time.Duration {
	if t.IsZero() {
		return 0
	}
	return max(now.Sub(t), 0)
}

func roundAge(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

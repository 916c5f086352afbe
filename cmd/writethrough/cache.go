package main

import (
	"context"
	"fmt"

	"github.com/writethrough/writethrough/internal/verify"
)

func init() {
	register("cache verify", "compare Redis with Postgres; exit 1 on any divergence", cacheCmd(false))
	register("cache repair", "rewrite divergent cache keys to Postgres's current rows", cacheCmd(true))
}

func cacheCmd(repair bool) func(ctx context.Context, c *cli, args []string) int {
	name := "cache verify"
	if repair {
		name = "cache repair"
	}
	return func(ctx context.Context, c *cli, args []string) int {
		fs := c.flags(name)
		collection := fs.String("collection", "", "check one collection (default all)")
		batch := fs.Int("batch", 1000, "keys per round trip")
		asJSON := fs.Bool("json", false, "print the report as JSON")
		var deleteOrphans *bool
		if repair {
			deleteOrphans = fs.Bool("delete-orphans", false, "also remove cache keys that have no entity")
		}
		cfg, code := c.parse(fs, args)
		if cfg == nil {
			return code
		}
		if !c.validCollection(name, *collection) {
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

		vc := verify.Config{
			Pool: d.pool, Fence: d.fence, Collection: *collection, Batch: *batch,
			Repair: repair, DeleteOrphans: deleteOrphans != nil && *deleteOrphans,
		}
		var bar *progress
		if !*asJSON && isTerminal(c.stdout) {
			total, err := verify.CountRefresh(ctx, verify.RefreshConfig{Pool: d.pool, Collection: *collection})
			if err != nil {
				return c.fail("%s: %v", name, err)
			}
			bar = c.newProgress(name, total)
			vc.Progress = bar.Set
		}
		rep, err := verify.Run(ctx, vc)
		bar.Done()
		if err != nil {
			return c.fail("%s: %v", name, redact(err))
		}
		if *asJSON {
			if code := c.printJSON(rep); code != exitOK {
				return code
			}
		} else {
			printCacheReport(c, name, rep, repair)
		}
		if !repair && rep.Divergent() > 0 {
			return exitFail
		}
		return exitOK
	}
}

func printCacheReport(c *cli, name string, rep *verify.Report, repair bool) {
	rate := 0.0
	if rep.Elapsed > 0 {
		rate = float64(rep.Checked) / rep.Elapsed
	}
	fmt.Fprintf(c.stdout, "checked %d entities and %d cache keys in %.2fs (%s keys/s)\n",
		rep.Checked, rep.KeysScanned, rep.Elapsed, human(rate))
	rows := []struct {
		label string
		n     int64
	}{
		{"missing", rep.Missing},
		{"stale", rep.Stale},
		{"ahead", rep.Ahead},
		{"data_mismatch", rep.DataMismatch},
		{"tombstone_mismatch", rep.TombstoneMismatch},
		{"orphan", rep.Orphans},
	}
	for _, r := range rows {
		fmt.Fprintf(c.stdout, "  %-20s %d\n", r.label, r.n)
	}
	for _, s := range rep.Samples {
		fmt.Fprintf(c.stdout, "  %-20s %s/%s postgres v%d redis v%d\n", s.Kind, s.Collection, s.ID, s.PostgresVersion, s.RedisVersion)
	}
	switch {
	case repair:
		fmt.Fprintf(c.stdout, "repaired %d, deleted %d orphans, skipped %d changed meanwhile\n", rep.Repaired, rep.OrphansDeleted, rep.Skipped)
		if rep.Orphans > rep.OrphansDeleted {
			fmt.Fprintln(c.stdout, "orphans are kept; run `cache repair --delete-orphans` to remove them")
		}
	case rep.Divergent() > 0:
		fmt.Fprintf(c.stdout, "%s: %d divergent keys; run `writethrough cache repair` to fix them\n", name, rep.Divergent())
	default:
		fmt.Fprintf(c.stdout, "%s: cache agrees with Postgres\n", name)
	}
}

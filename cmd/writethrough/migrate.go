package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pressly/goose/v3"

	"github.com/writethrough/writethrough/migrations"
)

func init() {
	register("migrate up", "apply every pending schema migration", migrateCmd("up"))
	register("migrate down", "roll back the newest schema migration", migrateCmd("down"))
	register("migrate status", "list schema migrations and whether each is applied", migrateCmd("status"))
}

// migration names one migration in a --json result.
type migration struct {
	Version int64  `json:"version"`
	Name    string `json:"name"`
}

// migrateResult is what `migrate up` or `migrate down` did: the schema's
// version before and after, and the migrations applied or rolled back.
type migrateResult struct {
	Schema     string       `json:"schema"`
	From       int64        `json:"from"`
	To         int64        `json:"to"`
	Applied    *[]migration `json:"applied,omitempty"`
	RolledBack *[]migration `json:"rolled_back,omitempty"`
}

func migrateCmd(action string) func(ctx context.Context, c *cli, args []string) int {
	return func(ctx context.Context, c *cli, args []string) int {
		name := "migrate " + action
		fs := c.flags(name)
		asJSON := fs.Bool("json", false, "print the result as JSON")
		cfg, code := c.parse(fs, args)
		if cfg == nil {
			return code
		}
		ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		m, err := migrations.Open(ctx, cfg.DatabaseURL, cfg.Schema)
		if err != nil {
			return c.fail("%s: %v", name, redact(err))
		}
		defer m.Close()
		if action == "status" {
			return c.migrateStatus(ctx, m, cfg.Schema, *asJSON)
		}
		res := &migrateResult{Schema: cfg.Schema}
		if res.From, err = m.Version(ctx); err != nil {
			return c.fail("%s: %v", name, redact(err))
		}
		done := []migration{}
		switch action {
		case "up":
			rs, err := m.Up(ctx)
			if err != nil {
				return c.fail("%s: %v", name, redact(err))
			}
			for _, r := range rs {
				done = append(done, migration{r.Source.Version, r.Source.Path})
				if !*asJSON {
					fmt.Fprintf(c.stdout, "applied %s (%s)\n", r.Source.Path, r.Duration.Round(time.Millisecond))
				}
			}
			res.Applied = &done
		case "down":
			r, err := m.Down(ctx)
			if err != nil && !errors.Is(err, migrations.ErrNothingToRollBack) {
				return c.fail("%s: %v", name, redact(err))
			}
			if r != nil {
				done = append(done, migration{r.Source.Version, r.Source.Path})
			}
			res.RolledBack = &done
		}
		if res.To, err = m.Version(ctx); err != nil {
			return c.fail("%s: %v", name, redact(err))
		}
		if *asJSON {
			return c.printJSON(res)
		}
		switch {
		case action == "up":
			fmt.Fprintf(c.stdout, "schema %s is up to date\n", cfg.Schema)
		case len(done) == 0:
			fmt.Fprintf(c.stdout, "nothing to roll back: no migration is applied in schema %s\n", cfg.Schema)
		default:
			fmt.Fprintf(c.stdout, "rolled back %s (schema %s is now at version %d)\n", done[0].Name, cfg.Schema, res.To)
		}
		return exitOK
	}
}

// migrateStatus lists the migrations; it changes nothing, not even on a
// schema that does not exist.
func (c *cli) migrateStatus(ctx context.Context, m *migrations.Migrator, schema string, asJSON bool) int {
	st, err := m.Status(ctx)
	if err != nil {
		return c.fail("migrate status: %v", redact(err))
	}
	type row struct {
		Version   int64  `json:"version"`
		Name      string `json:"name"`
		Applied   bool   `json:"applied"`
		AppliedAt string `json:"applied_at,omitempty"`
	}
	rows := make([]row, len(st))
	applied := 0
	for i, s := range st {
		rows[i] = row{Version: s.Source.Version, Name: s.Source.Path, Applied: s.State == goose.StateApplied}
		if rows[i].Applied {
			applied++
		}
		if !s.AppliedAt.IsZero() {
			rows[i].AppliedAt = s.AppliedAt.UTC().Format(time.RFC3339)
		}
	}
	if asJSON {
		return c.printJSON(rows)
	}
	for _, r := range rows {
		state := "pending"
		if r.Applied {
			state = "applied " + r.AppliedAt
		}
		fmt.Fprintf(c.stdout, "%05d  %-28s %s\n", r.Version, r.Name, state)
	}
	fmt.Fprintf(c.stdout, "schema %s: %d of %d migrations applied\n", schema, applied, len(rows))
	return exitOK
}

package main

import (
	"flag"
	"fmt"
	"time"

	"github.com/writethrough/writethrough/outbox"
	"github.com/writethrough/writethrough/writer"
)

// filterFlags are the selection flags shared by the outbox commands.
type filterFlags struct {
	collection, key, since, until, errText *string
}

// bindFilter defines --collection, --key, --since, --until (and --error when
// withError) on fs; timeWhat says what the time range applies to.
func bindFilter(fs *flag.FlagSet, timeWhat string, withError bool) *filterFlags {
	f := &filterFlags{
		collection: fs.String("collection", "", "only this collection"),
		key:        fs.String("key", "", "only this entity id (needs --collection)"),
		since:      fs.String("since", "", "only entries whose "+timeWhat+" is at or after this RFC 3339 time"),
		until:      fs.String("until", "", "only entries whose "+timeWhat+" is before this RFC 3339 time"),
	}
	if withError {
		f.errText = fs.String("error", "", "only entries whose last error contains this text")
	}
	return f
}

// filter validates the flags; on a bad value it prints one line and returns
// false (exit status 2).
func (f *filterFlags) filter(c *cli, name string) (outbox.Filter, bool) {
	out := outbox.Filter{Collection: *f.collection, EntityID: *f.key}
	if f.errText != nil {
		out.Error = *f.errText
	}
	if !c.validCollection(name, out.Collection) {
		return out, false
	}
	if out.EntityID != "" {
		if out.Collection == "" {
			fmt.Fprintf(c.stderr, "writethrough %s: --key needs --collection\n", name)
			return out, false
		}
		if err := writer.ValidateID(out.EntityID); err != nil {
			fmt.Fprintf(c.stderr, "writethrough %s: --key: %v\n", name, err)
			return out, false
		}
	}
	var ok bool
	if out.Since, ok = c.parseTime(name, "since", *f.since); !ok {
		return out, false
	}
	if out.Until, ok = c.parseTime(name, "until", *f.until); !ok {
		return out, false
	}
	if !out.Since.IsZero() && !out.Until.IsZero() && !out.Since.Before(out.Until) {
		fmt.Fprintf(c.stderr, "writethrough %s: --since must be before --until\n", name)
		return out, false
	}
	return out, true
}

// parseTime reads an RFC 3339 time; "" is the zero time.
func (c *cli) parseTime(name, flagName, s string) (time.Time, bool) {
	if s == "" {
		return time.Time{}, true
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		fmt.Fprintf(c.stderr, "writethrough %s: --%s must be an RFC 3339 time such as 2026-11-28T12:00:00Z, got %q\n", name, flagName, s)
		return time.Time{}, false
	}
	return t, true
}

// validCollection reports whether s is empty or a collection name, printing
// one line when it is not.
func (c *cli) validCollection(name, s string) bool {
	if s == "" {
		return true
	}
	if err := writer.ValidateCollection(s); err != nil {
		fmt.Fprintf(c.stderr, "writethrough %s: --collection: %v\n", name, err)
		return false
	}
	return true
}

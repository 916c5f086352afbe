package main

import (
	"encoding/json"
	"errors"
	"regexp"
)

// printJSON writes v as indented JSON to stdout.
func (c *cli) printJSON(v any) int {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return c.fail("write output: %v", err)
	}
	return exitOK
}

var urlInText = regexp.MustCompile(`[a-z]+://[^\s"']+`)

// redact removes connection strings (which may hold passwords) from an error.
func redact(err error) error {
	if err == nil {
		return nil
	}
	return errors.New(urlInText.ReplaceAllString(err.Error(), "<url>"))
}

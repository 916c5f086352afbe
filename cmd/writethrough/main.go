// Command writethrough is the write-through cache service and its on-call
// tools: serve, relay, migrate, outbox, cache and events (CONTRACT §6).
//
// main only calls run, which tests call with their own arguments and
// environment.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

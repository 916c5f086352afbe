package main

import (
	"context"
)

// startRelay starts the relay over d (d.nc is connected) and returns a
// function that stops it gracefully. serve calls it unless --relay=false.
func startRelay(ctx context.Context, d *deps) (stop func(context.Context) error, err error) {
	// TODO(relay): build relay.New from d and start it.
	return func(context.Context) error { return nil }, nil
}

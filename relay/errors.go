package relay

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrStopped is returned by Start after Stop.
var ErrStopped = errors.New("relay: stopped")

// ErrTooLarge reports an event larger than the server's max payload: a
// poison message that becomes a dead letter at once.
var ErrTooLarge = errors.New("event exceeds the NATS server's max payload")

// IsOutage reports whether a publish error says the broker (or the path to
// it) is unavailable, rather than that the message was rejected on its own.
// Such failures never count as attempts when the whole batch is affected.
func IsOutage(err error) bool {
	return errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, jetstream.ErrAsyncPublishTimeout) ||
		errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrDisconnected) ||
		errors.Is(err, nats.ErrConnectionClosed) ||
		errors.Is(err, nats.ErrConnectionReconnecting) ||
		errors.Is(err, jetstream.ErrTooManyStalledMsgs) ||
		errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, context.Canceled)
}

// Package relay works the outbox: it repairs cache writes that did not
// succeed and publishes one CloudEvent per committed change to NATS JetStream.
package relay

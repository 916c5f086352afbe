// Package relay works the outbox: it repairs cache writes that did not
// succeed and publishes one CloudEvent per committed change to NATS
// JetStream (CONTRACT §4 and §5). It does not write entities, serve HTTP or
// define the event format (internal/cloudevent) or the outbox SQL (outbox).
//
// # Ownership: partition leases
//
// Keys hash to 64 partitions (outbox.PartitionOf). A relay works only the
// partitions it leases in the leases table, so each key has one owner at a
// time and per-key order holds with any number of relays. Every LeaseTTL/5
// (default 1s) a relay heartbeats in relays, renews its leases, and moves
// towards its fair share, ceil(64 / live relays): above it, it stops working
// the surplus partitions and releases them once none of their entries is
// being worked; below it, it takes free or expired ones. Taking a partition
// bumps its epoch and writes a lease_log row; the previous owner's row is closed
// at the moment its lease ran out (or when it released it), so lease_log
// proves that no two relays owned a partition at once.
//
// A relay stops working a partition when less than 2/5 of LeaseTTL is left
// by its own monotonic clock, measured from before the statement that
// renewed it, so it is done before the database lets anyone else take over.
// Every statement that marks entries (published, repaired, failed, dead)
// names the relay's (partition, epoch) pairs and locks those lease rows FOR
// SHARE: a relay that lost a lease cannot mark its entries, and a takeover
// waits for a mark in progress. A dead or hung relay's partitions are taken
// over after at most LeaseTTL plus one tick (about 3.6s by default).
//
// # Pipeline
//
// One worker goroutine owns the relay's state; a claim, a cache repair and
// a mark each run in a goroutine of their own (at most one of each at a
// time), so a claim never waits for a mark and the publish window stays
// full across batches. A claim is one short statement (no transaction is
// held across Redis or NATS) that reads, per workable partition, up to
// BatchPerPartition entries needing work, selected by state and ordered by
// seq, never by "last seq seen", leaving out (a hashed set) the entries the
// relay is already working: queued, in flight, being repaired or awaiting
// their mark. Claims start on a LISTEN/NOTIFY wake-up (a dedicated
// connection that listens again after a reconnect; the payload names the
// partitions the commit changed, and only those are read), on a direct
// WakeHeld from a writer in the same process, on the PollInterval fallback
// (every partition held), or while the previous claim filled a partition's
// batch and the pipeline has room (4×MaxInFlight entries).
//
// Hand-off: a writer in the same process gives WakeHeld the entries it has
// just committed. Those the cache took are queued at once, with no claim,
// where the key's order is known in the worker: the key's previous version
// is the newest it queued, or it published it (acknowledged), or there is
// none. Versions of a key are contiguous, so anything else (a version
// committed elsewhere, or worked by another relay meanwhile) shows as a
// mismatch, and such an entry is left to a claim of its partition. A claim
// skips handed entries, which are tracked like claimed ones. Start opens
// the listening connection before the worker's first claim, so a commit
// after that claim is always announced.
//
// Cache state: the writer records nothing after its synchronous cache write
// (that would cost a second update of every outbox row on the write path).
// Instead, when the relay claims an event it reads the key from Redis in one
// pipelined round; if the cache holds the event's version or a newer one,
// the statement that marks the event published also settles its cache state.
//
// Cache repair: an entry whose cache state is still unsettled after
// RepairGrace (the synchronous write failed or timed out, or Redis lost the
// key before the relay looked) gets its key rewritten from
// the entity's current row through the fence, once per key however many
// entries are pending; those entries are then marked done. A claim that
// leaves such an entry within its grace schedules the claim that repairs
// it, so a repair never waits for the poll interval. The outbox
// payload is never written to the cache.
//
// Publishing: events go out with PublishMsgAsync, up to MaxInFlight
// unacknowledged, at most one per key: the next version of a key is
// published only after the previous one was acknowledged. Each event gets a
// producer span, a child of the trace stored with the change; ce-traceparent
// carries the stored traceparent. Acknowledged events and repaired entries
// are marked together, in batches of up to 8192 in one statement, while
// publishing goes on. Nats-Msg-Id is ce-id, so a re-publish after a crash
// between publish and mark is dropped by JetStream within the stream's
// DuplicateWindow (default 2m, set on the stream at start); past the window
// consumers dedupe by ce-id.
//
// # Failures
//
// A key whose event failed is parked: its later events wait, other keys
// flow. The failure counts as an attempt and schedules a retry with
// exponential backoff and jitter (cenkalti/backoff, RetryInitial to
// RetryMax); after MaxAttempts the entry becomes a dead letter (metric and
// log line) and the key moves on. An event larger than the server's max
// payload is a dead letter at once. Outages burn no attempts: when NATS is
// not connected, reconnected since the event was sent, or acknowledged
// nothing since then, a timeout or no-responders failure is left as it is
// and the key waits a poll interval; likewise when Redis or Postgres fail.
//
// # Housekeeping and metrics
//
// Every HousekeepingInterval the relay refreshes writethrough.outbox.lag
// (age of the oldest unpublished entry, seconds) and writethrough.outbox.dead;
// once a minute it prunes finished entries older than Retention (default
// 72h) in batches of 1000. Counters: writethrough.relay.events.published,
// writethrough.relay.dead_letters, writethrough.relay.cache.repairs,
// writethrough.relay.publish.retries.
//
// # Lifecycle
//
// Start returns once the relay holds its first leases and runs. Stop
// publishes nothing new, waits for the events in flight and marks them,
// releases the leases (lease_until = now,
// lease_log closed) and waits for every goroutine; it is idempotent.
//
// Built with the tag chaos, the relay can kill its own process at
// "relay-after-publish" and "relay-after-repair" (see internal/crashpoint).
package relay

package writer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Group commit. One-change writes (Writer.Put and Writer.Delete) that arrive
// while earlier ones are being committed share a transaction: one BEGIN, each
// write's change and outbox entry, one COMMIT, then one pipelined cache write
// for all of them. Postgres then pays one commit, one WAL flush and one round
// trip for the lot instead of one each.
//
//   - A write never waits for company: when fewer than maxGroups groups are
//     in their transaction, its caller commits at once whatever has queued,
//     itself included. Writes queue only while maxGroups transactions are in
//     flight; a group that has committed writes the cache without counting,
//     so the next group's transaction overlaps that cache write.
//   - Once sent, a write runs to its end even if its caller's context ends
//     (bounded by groupTimeout): the other writes of its group want theirs.
//     A write still queued when its context ends leaves and commits nothing.
//   - A group holds each key at most once, and takes its rows in key order,
//     so two groups never deadlock on each other.
//   - Each write keeps its own answer: a failed precondition or a missing
//     entity commits nothing for that write and does not touch the others.
//   - A statement error (a deadlock with another transaction, a value
//     Postgres rejects) rolls the whole group back before its COMMIT; every
//     write is then run again on its own, as if it had never been grouped,
//     so one bad write fails only itself. An error that leaves the COMMIT's
//     fate unknown (the connection lost) is every member's answer, as it
//     would be for a write on its own.
//   - A group that waits longer than groupStall (a row lock held by a long
//     transaction elsewhere) stops counting against maxGroups, so writes to
//     other keys go on in new groups; only its own members wait with it.

// groupStall is how long a group may take before it no longer holds back
// new groups.
const groupStall = 20 * time.Millisecond

// groupTimeout bounds one group's transaction and cache write. The group
// does not stop when one member's context ends: the others still want their
// writes.
const groupTimeout = 30 * time.Second

// groupWrite is one write waiting for, or in, a group.
type groupWrite struct {
	ctx  context.Context
	key  groupKey
	c    oneChange
	wake chan struct{} // finished, or asked to lead

	// under committer.mu
	taken    bool // in a group
	finished bool // answered
	lead     bool // asked to lead, not yet leading
	leading  bool // its caller leads

	res Result // valid once finished
	err error
}

type groupKey struct{ collection, id string }

// committer forms the groups of one Writer.
type committer struct {
	w         *Writer
	size      int // most writes in one group
	maxGroups int // most groups in flight before writes queue
	stall     time.Duration

	mu       sync.Mutex
	queue    []*groupWrite
	inflight map[groupKey]int // keys of the groups in flight
	running  int              // groups in flight that are not stalled, and callers about to lead
}

func (c *committer) write(ctx context.Context, collection, id string, oc oneChange) (Result, error) {
	if c.size <= 1 {
		return c.w.commitOne(ctx, collection, id, oc)
	}
	g := &groupWrite{ctx: ctx, key: groupKey{collection, id}, c: oc, wake: make(chan struct{}, 1)}
	c.mu.Lock()
	c.queue = append(c.queue, g)
	lead := c.running < c.maxGroups
	if lead {
		c.running++
		g.leading = true
	}
	c.mu.Unlock()
	done := ctx.Done()
	for {
		if lead && c.lead(g) {
			return g.res, g.err
		}
		select {
		case <-g.wake:
		case <-done:
			c.mu.Lock()
			if !g.taken && !g.lead {
				// Never sent: leave the queue and commit nothing.
				c.queue = slices.DeleteFunc(c.queue, func(q *groupWrite) bool { return q == g })
				c.mu.Unlock()
				return Result{}, classify(ctx.Err())
			}
			c.mu.Unlock()
			// Sent, or asked to lead: wait for the answer, or for the
			// lead. A lead taken up before is spent: leading again
			// without being asked would run a group with no place.
			done, lead = nil, false
			continue
		}
		c.mu.Lock()
		finished := g.finished
		lead, g.lead, g.leading = g.lead, false, g.lead
		c.mu.Unlock()
		if finished && !lead {
			return g.res, g.err
		}
	}
}

// lead commits one group from the queue and answers its writes. It gives
// up its place among the groups in flight as soon as the group has
// committed, passing the lead to the first queued write whose caller waits,
// so the next group's transaction runs while this one writes the cache. It
// reports whether own has its answer; if not, own is in another group, or
// still queued (the group was full, or another group holds its key).
func (c *committer) lead(own *groupWrite) bool {
	c.mu.Lock()
	batch := c.takeLocked()
	if len(batch) == 0 {
		own.leading = false
		c.running--
		finished := own.finished
		c.mu.Unlock()
		return finished
	}
	c.mu.Unlock()
	answer := c.commit(batch)
	c.mu.Lock()
	for _, g := range batch {
		if c.inflight[g.key]--; c.inflight[g.key] == 0 {
			delete(c.inflight, g.key)
		}
	}
	own.leading = false
	if !c.passLeadLocked() {
		c.running--
	}
	c.mu.Unlock()
	answer()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, g := range batch {
		g.finished = true
		signal(g.wake)
	}
	if own.lead && own.finished {
		// The lead was passed to own while its caller was busy with this
		// group, and another group has answered own since: hand the lead
		// on, or give the place up, or it is lost for good. (Unanswered,
		// own's caller takes it up when it waits again.)
		own.lead = false
		if !c.passLeadLocked() {
			c.running--
		}
	}
	return own.finished
}

// passLeadLocked asks the first queued write whose caller is not leading
// already to lead, and reports whether there was one.
func (c *committer) passLeadLocked() bool {
	for _, g := range c.queue {
		if !g.leading && !g.lead {
			g.lead = true
			signal(g.wake)
			return true
		}
	}
	return false
}

// takeLocked takes up to size queued writes in queue order, skipping keys
// a group already holds: such a write would only wait for that group's row
// lock, and hold up the rest of its own group meanwhile.
func (c *committer) takeLocked() []*groupWrite {
	var batch []*groupWrite
	rest := c.queue[:0]
	for _, g := range c.queue {
		if len(batch) < c.size && c.inflight[g.key] == 0 {
			c.inflight[g.key]++
			g.taken = true
			batch = append(batch, g)
			continue
		}
		rest = append(rest, g)
	}
	clear(c.queue[len(rest):])
	c.queue = rest
	return batch
}

// commit commits batch in one transaction, or each write on its own if
// the group was rolled back, and returns what still has to be done to
// answer its writes: the cache write of a committed group. A group that
// takes longer than c.stall stops counting against maxGroups meanwhile.
func (c *committer) commit(batch []*groupWrite) (answer func()) {
	stalled, done := false, false
	timer := time.AfterFunc(c.stall, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if done {
			return
		}
		// Stop holding back new groups; start one if writes are queued.
		stalled = true
		if !c.passLeadLocked() {
			c.running--
		}
	})
	answer = c.commitGroup(batch)
	timer.Stop()
	c.mu.Lock()
	done = true
	if stalled {
		c.running++ // the leader gives its place up as usual
	}
	c.mu.Unlock()
	return answer
}

func (c *committer) commitGroup(batch []*groupWrite) (answer func()) {
	w := c.w
	// The group's statements and cache write are traced under its oldest
	// write; each write's outbox entry keeps its own trace context. The
	// group runs on when that write's caller goes away.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(batch[0].ctx), groupTimeout)
	// Key order, so that groups in flight together take their locks in the
	// same order.
	slices.SortFunc(batch, func(a, b *groupWrite) int {
		return cmp.Or(cmp.Compare(a.key.collection, b.key.collection), cmp.Compare(a.key.id, b.key.id))
	})
	t, queued, err := w.attemptGroup(ctx, batch)
	var rolledBack *groupRolledBack
	switch {
	case errors.As(err, &rolledBack):
		// Nothing committed: run each write on its own, as if never grouped.
		w.log.LogAttrs(ctx, slog.LevelDebug, "group rolled back; its writes run on their own",
			slog.Int("writes", len(batch)), slog.String("error", err.Error()))
		cancel()
		var wg sync.WaitGroup
		for _, g := range batch {
			wg.Go(func() { g.res, g.err = w.commitOne(g.ctx, g.key.collection, g.key.id, g.c) })
		}
		wg.Wait()
		return func() {}
	case err != nil:
		cancel()
		for _, g := range batch {
			g.err = classify(err)
		}
		return func() {}
	}
	for i, g := range batch {
		ch, err := queued[i].outcome()
		if err != nil {
			g.err = err
			continue
		}
		g.res.Changes = []Change{t.add(ch, queued[i].entry)}
	}
	return func() {
		defer cancel()
		cw := w.afterCommit(ctx, t)
		for _, g := range batch {
			if g.err == nil {
				g.res.CacheWrite = cw
			}
		}
	}
}

// groupRolledBack is a group that failed before its COMMIT: nothing of it
// was committed.
type groupRolledBack struct{ err error }

func (e *groupRolledBack) Error() string { return "group rolled back: " + e.err.Error() }
func (e *groupRolledBack) Unwrap() error { return e.err }

// attemptGroup sends BEGIN, every write's change and outbox entry, and
// COMMIT in one batch, and returns the committed transaction (its changes
// not yet added) with what each write's statements answered.
func (w *Writer) attemptGroup(ctx context.Context, batch []*groupWrite) (*txn, []*queuedChange, error) {
	conn, err := w.pool.Acquire(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("begin: %w", err)
	}
	t := &txn{conn: conn, w: w, begun: true}
	defer t.finish(ctx)
	b := &pgx.Batch{}
	b.Queue("begin")
	queued := make([]*queuedChange, len(batch))
	for i, g := range batch {
		queued[i] = queueChange(b, g.key.collection, g.key.id, g.c, traceparent(g.ctx))
	}
	commitTag := queueCommit(b)
	err = conn.SendBatch(ctx, b).Close()
	var pgErr *pgconn.PgError
	switch {
	case err != nil && errors.As(err, &pgErr) && commitTag.String() == "":
		// A statement failed, so Postgres skipped the rest, COMMIT included.
		return nil, nil, &groupRolledBack{err: err}
	case err != nil:
		return nil, nil, fmt.Errorf("group of %d writes: %w", len(batch), err)
	case commitTag.String() != "COMMIT":
		return nil, nil, &groupRolledBack{err: pgx.ErrTxCommitRollback}
	}
	t.done = true
	return t, queued, nil
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

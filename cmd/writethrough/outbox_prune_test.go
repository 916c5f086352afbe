package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// TestOutboxPruneRetention: without --older-than, prune keeps what the relay
// keeps: WT_OUTBOX_RETENTION, default 72h. The flag still wins.
func TestOutboxPruneRetention(t *testing.T) {
	t.Parallel()
	b := setupAdmin(t)
	for i := range 3 {
		b.put(t, "users", fmt.Sprint(i), `{}`)
	}
	b.exec(t, `UPDATE outbox SET publish_state = 'done', cache_state = 'done', committed_at = now() - interval '1 minute'`)
	b.exec(t, `UPDATE outbox SET committed_at = now() - interval '100 hours' WHERE entity_id = '0'`)

	var res struct {
		Cutoff  time.Time `json:"cutoff"`
		Deleted int64     `json:"deleted"`
	}
	b.jsonCmd(t, &res, "outbox", "prune", "--dry-run")
	require.EqualValues(t, 1, res.Deleted, "the default retention is 72h")
	require.WithinDuration(t, time.Now().Add(-72*time.Hour), res.Cutoff, time.Minute)

	b.vars["WT_OUTBOX_RETENTION"] = "1s"
	b.jsonCmd(t, &res, "outbox", "prune", "--dry-run")
	require.EqualValues(t, 3, res.Deleted, "WT_OUTBOX_RETENTION=1s")
	require.WithinDuration(t, time.Now().Add(-time.Second), res.Cutoff, 30*time.Second)
	code, out, _ := b.cmd(t, "outbox", "prune", "--dry-run")
	require.Equal(t, exitOK, code)
	require.Contains(t, out, "would delete 3 finished entries")

	b.jsonCmd(t, &res, "outbox", "prune", "--dry-run", "--older-than", "2h")
	require.EqualValues(t, 1, res.Deleted, "the flag wins over the variable")

	b.vars["WT_OUTBOX_RETENTION"] = "soon"
	code, _, errOut := b.cmd(t, "outbox", "prune", "--dry-run")
	require.Equal(t, exitUsage, code)
	require.Contains(t, errOut, "WT_OUTBOX_RETENTION")
	b.jsonCmd(t, &res, "outbox", "prune", "--dry-run", "--older-than", "2h")
	require.EqualValues(t, 1, res.Deleted, "a bad variable does not matter when the flag is given")
}

// TestOutboxPruneWalksInSeqOrder: prune walks the entries in seq order and
// stops at the first one committed after the cutoff. An older entry behind
// it (its transaction ran long) waits for a later prune; the dry run counts
// what the prune deletes.
func TestOutboxPruneWalksInSeqOrder(t *testing.T) {
	t.Parallel()
	b := setupAdmin(t)
	for i := range 3 {
		b.put(t, "users", fmt.Sprint(i), `{}`)
	}
	b.exec(t, `UPDATE outbox SET publish_state = 'done', cache_state = 'done', committed_at = now() - interval '100 hours'`)
	b.exec(t, `UPDATE outbox SET committed_at = now() - interval '1 minute' WHERE entity_id = '1'`)

	var res struct {
		Deleted int64 `json:"deleted"`
	}
	b.jsonCmd(t, &res, "outbox", "prune", "--dry-run", "--older-than", "2h")
	require.EqualValues(t, 1, res.Deleted)
	b.jsonCmd(t, &res, "outbox", "prune", "--older-than", "2h", "--batch", "1")
	require.EqualValues(t, 1, res.Deleted)
	require.Equal(t, []string{"1", "2"}, b.outboxKeys(t))

	b.jsonCmd(t, &res, "outbox", "prune", "--older-than", "0s", "--batch", "1")
	require.EqualValues(t, 2, res.Deleted)
	require.Empty(t, b.outboxKeys(t))
}

// outboxKeys returns the entity ids of the outbox entries in seq order.
func (b *adminBundle) outboxKeys(t *testing.T) []string {
	t.Helper()
	rows, err := b.env.Pool.Query(context.Background(), `SELECT entity_id FROM outbox ORDER BY seq`)
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return ids
}

package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// tail runs events tail over the whole stream until it has printed limit
// events (or 10 s pass) and returns its output lines.
func (b *adminBundle) tail(t *testing.T, limit string, args ...string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	code, out, errOut := b.cmdCtx(t, ctx, append([]string{"events", "tail", "--since-seq", "1", "--limit", limit}, args...)...)
	require.NoError(t, ctx.Err(), "events tail %v printed fewer than %s events: %q", args, limit, out)
	require.Equal(t, exitOK, code, errOut)
	return strings.Split(strings.TrimSuffix(out, "\n"), "\n")
}

// TestEventsTailDataVerbatim: --json prints the event body byte for byte,
// with Postgres's spaces and without HTML escapes.
func TestEventsTailDataVerbatim(t *testing.T) {
	t.Parallel()
	b := setupAdmin(t)
	_, js := createStream(t, b.env)
	b.put(t, "users", "<a&b>", `{"t": "<&>", "n": [1, 2]}`)
	originals := publishOriginals(t, b, js)
	require.Len(t, originals, 1)
	body := string(originals[0].Representation())
	require.Contains(t, body, `{"n": [1, 2], "t": "<&>"}`, "data as Postgres prints jsonb")

	lines := b.tail(t, "1", "--json")
	require.Len(t, lines, 1)
	require.True(t, json.Valid([]byte(lines[0])), lines[0])
	require.Contains(t, lines[0], `"data":`+body)
	require.Contains(t, lines[0], `"entity_subject":"users/<a&b>"`)
	var te tailedEvent
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &te))
	require.Equal(t, body, string(te.Data))
	require.Equal(t, "<a&b>", te.EntityID)
}

// TestEventsTailKeyFromBody: NATS trims the blanks around a header value, so
// ce-subject cannot tell "trail " from "trail"; the key filter and the id
// printed come from the event body, which is exact.
func TestEventsTailKeyFromBody(t *testing.T) {
	t.Parallel()
	b := setupAdmin(t)
	_, js := createStream(t, b.env)
	b.put(t, "users", "trail ", `{"k": 1}`)
	b.put(t, "users", "trail", `{"k": 2}`)
	b.put(t, "users", " sp ", `{"k": 3}`)
	b.put(t, "orders", "trail ", `{"k": 4}`)
	publishOriginals(t, b, js)

	for _, key := range []string{"trail ", "trail", " sp "} {
		lines := b.tail(t, "1", "--json", "--collection", "users", "--key", key)
		require.Len(t, lines, 1)
		var te tailedEvent
		require.NoError(t, json.Unmarshal([]byte(lines[0]), &te))
		require.Equal(t, "users", te.Collection)
		require.Equal(t, key, te.EntityID, "--key %q", key)
	}
	lines := b.tail(t, "1", "--collection", "orders", "--key", "trail ")
	require.Contains(t, lines[0], `orders/"trail "`)
	lines = b.tail(t, "4")
	require.Contains(t, lines[0], `users/"trail "`)
	require.Contains(t, lines[1], `users/trail `)
	require.Contains(t, lines[2], `users/" sp "`)
}

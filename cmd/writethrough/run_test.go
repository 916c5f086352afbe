package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestUsage: usage asked for goes to stdout with exit 0; usage after a
// mistake (no command at all) goes to stderr with exit 2.
func TestUsage(t *testing.T) {
	t.Parallel()
	getenv := func(string) string { return "" }
	for _, args := range [][]string{nil, {}} {
		var out, errOut bytes.Buffer
		require.Equal(t, exitUsage, run(context.Background(), args, getenv, &out, &errOut))
		require.Empty(t, out.String(), "usage after a mistake belongs on stderr")
		require.Contains(t, errOut.String(), "usage: writethrough <command>")
		require.Contains(t, errOut.String(), "events tail")
	}
	for _, arg := range []string{"help", "-h", "--help"} {
		var out, errOut bytes.Buffer
		require.Equal(t, exitOK, run(context.Background(), []string{arg}, getenv, &out, &errOut), arg)
		require.Contains(t, out.String(), "usage: writethrough <command>", arg)
		require.Empty(t, errOut.String(), arg)
	}
	var out, errOut bytes.Buffer
	require.Equal(t, exitUsage, run(context.Background(), []string{"frobnicate"}, getenv, &out, &errOut))
	require.Empty(t, out.String())
	require.Contains(t, errOut.String(), `unknown command "frobnicate"`)
}

// A failure is one line, even when the error behind it spans several (a
// connection error lists each address it tried).
func TestFailureIsOneLine(t *testing.T) {
	t.Parallel()
	vars := map[string]string{"DATABASE_URL": "postgres://postgres:hunter2@127.0.0.1:1/test?connect_timeout=2"}
	var out, errOut bytes.Buffer
	require.Equal(t, exitFail, run(context.Background(), []string{"serve"}, func(k string) string { return vars[k] }, &out, &errOut))
	msg := errOut.String()
	require.Equal(t, 1, strings.Count(msg, "\n"), msg)
	require.Contains(t, msg, "postgres does not answer at DATABASE_URL")
	require.NotContains(t, msg, "hunter2")

	require.Equal(t, "failed to connect: a:1: refused; b:1: refused", joinLines("failed to connect:\n\ta:1: refused\n\tb:1: refused\n"))
}

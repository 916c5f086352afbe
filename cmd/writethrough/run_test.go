package main

import (
	"bytes"
	"context"
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

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"
)

// The Redis client's own log lines join the process log, passwords hidden.
func TestRedisClientLogsThroughProcessLog(t *testing.T) {
	var buf bytes.Buffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewJSONHandler(&buf, nil)))
	defer slog.SetDefault(prev)
	redisLogger{}.Printf(context.Background(), "redis: %s: dial failed", "redis://:hunter2@127.0.0.1:1/0")
	var line struct {
		Level, Msg, Detail string
	}
	require.NoError(t, json.Unmarshal(buf.Bytes(), &line), buf.String())
	require.Equal(t, "WARN", line.Level)
	require.Equal(t, "redis client", line.Msg)
	require.Contains(t, line.Detail, "dial failed")
	require.NotContains(t, buf.String(), "hunter2")
}

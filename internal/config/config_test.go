package config

import (
	"flag"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestUsageHidesPasswords(t *testing.T) {
	env := map[string]string{
		"DATABASE_URL": "postgres://app:hunter2@db:5432/wt?sslmode=disable",
		"REDIS_URL":    "redis://:hunter3@cache:6379/0",
		"NATS_URL":     "nats://u:hunter4@bus:4222",
	}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	b := Bind(fs, func(k string) string { return env[k] })
	var usage strings.Builder
	fs.SetOutput(&usage)
	fs.PrintDefaults()
	for _, secret := range []string{"hunter2", "hunter3", "hunter4"} {
		require.NotContains(t, usage.String(), secret)
	}
	require.Contains(t, usage.String(), "postgres://app:xxxxx@db:5432/wt?sslmode=disable")

	// The values themselves keep their passwords.
	require.NoError(t, fs.Parse(nil))
	cfg, err := b.Finish()
	require.NoError(t, err)
	require.Equal(t, env["DATABASE_URL"], cfg.DatabaseURL)
	require.Equal(t, env["NATS_URL"], cfg.NATSURL)
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://a:pw@h/db":                 "postgres://a:xxxxx@h/db",
		"postgres://a@h/db?password=pw&x=1":    "postgres://a@h/db?password=xxxxx&x=1",
		"host=h user=a password=pw dbname=db":  "host=h user=a password=xxxxx dbname=db",
		"redis://127.0.0.1:6379/0":             "redis://127.0.0.1:6379/0",
		"nats://127.0.0.1:4222,nats://h2:4222": "nats://127.0.0.1:4222,nats://h2:4222",
	} {
		require.Equal(t, want, Redact(in), in)
	}
}

func TestNATSURL(t *testing.T) {
	for _, ok := range []string{"nats://127.0.0.1:4222", "127.0.0.1:4222", "tls://h:4443", "nats://a:4222, nats://b:4222", "ws://h:80"} {
		require.NoError(t, checkNATSURL(ok), ok)
	}
	for _, bad := range []string{"http://127.0.0.1:4222", "", "nats://", "foo://x:1", "nats://a:4222,"} {
		require.Error(t, checkNATSURL(bad), bad)
	}
}

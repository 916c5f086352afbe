// Package config maps writethrough's environment variables and flags
// (CONTRACT §2) onto one struct. Every variable also has a flag; a flag wins
// over its variable. Bad configuration is reported with one line that names
// the variable. Only cmd/ uses this package: the library components take
// their own Config structs.
package config

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"unicode"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/writethrough/writethrough/migrations"
)

// Config is the process configuration.
type Config struct {
	DatabaseURL   string
	Schema        string
	RedisURL      string
	NATSURL       string
	HTTPAddr      string
	RedisPrefix   string
	Stream        string
	SubjectPrefix string
	EventSource   string
	MaxBodyBytes  int64
	LogLevel      string
}

type variable struct {
	env, flag, def, usage string
	dst                   *string
}

func (c *Config) variables(maxBody *string) []variable {
	return []variable{
		{"DATABASE_URL", "database-url", "postgres://postgres@127.0.0.1:5432/writethrough?sslmode=disable", "Postgres URL", &c.DatabaseURL},
		{"WT_DB_SCHEMA", "db-schema", "writethrough", "Postgres schema that holds writethrough's tables", &c.Schema},
		{"REDIS_URL", "redis-url", "redis://127.0.0.1:6379/0", "Redis URL (rediss:// for TLS)", &c.RedisURL},
		{"NATS_URL", "nats-url", "nats://127.0.0.1:4222", "NATS URL", &c.NATSURL},
		{"WT_HTTP_ADDR", "http-addr", "127.0.0.1:8080", "API listen address", &c.HTTPAddr},
		{"WT_REDIS_PREFIX", "redis-prefix", "wt:", "prefix of every cache key", &c.RedisPrefix},
		{"WT_NATS_STREAM", "nats-stream", "WRITETHROUGH", "JetStream stream", &c.Stream},
		{"WT_NATS_SUBJECT_PREFIX", "nats-subject-prefix", "wt", "first token of every event subject", &c.SubjectPrefix},
		{"WT_EVENT_SOURCE", "event-source", "/writethrough", "ce-source of every event", &c.EventSource},
		{"WT_MAX_BODY_BYTES", "max-body-bytes", "524288", "request body limit in bytes", maxBody},
		{"WT_LOG_LEVEL", "log-level", "info", "log level: debug, info, warn or error", &c.LogLevel},
	}
}

// Variables returns the names of the environment variables the
// configuration reads, in the order of CONTRACT §2. The standard OTEL_*
// variables are read by the OpenTelemetry SDK and are not listed.
func Variables() []string {
	var c Config
	var maxBody string
	vs := c.variables(&maxBody)
	names := make([]string, len(vs))
	for i, v := range vs {
		names[i] = v.env
	}
	return names
}

// Bind defines a flag for every variable on fs, defaulting to the
// environment's value (read through getenv) or the built-in default. Call
// Finish after fs.Parse.
func Bind(fs *flag.FlagSet, getenv func(string) string) *Binding {
	b := &Binding{cfg: &Config{}}
	for _, v := range b.cfg.variables(&b.maxBody) {
		def := v.def
		if e := getenv(v.env); e != "" {
			def = e
		}
		fs.StringVar(v.dst, v.flag, def, v.usage+" ($"+v.env+")")
		if strings.HasSuffix(v.env, "_URL") {
			fs.Lookup(v.flag).DefValue = Redact(def) // usage text shows no password
		}
	}
	return b
}

var passwordParam = regexp.MustCompile(`(?i)(password=)[^&\s]*`)

// Redact returns a URL (or key=value connection string) with its password
// replaced by "xxxxx".
func Redact(s string) string {
	if u, err := url.Parse(s); err == nil && u.Scheme != "" && u.User != nil {
		if _, ok := u.User.Password(); ok {
			s = u.Redacted()
		}
	}
	return passwordParam.ReplaceAllString(s, "${1}xxxxx")
}

// Binding holds flag values until Finish validates them.
type Binding struct {
	cfg     *Config
	maxBody string
}

// Error is a configuration error; its message names the variable.
type Error struct{ Msg string }

func (e *Error) Error() string { return e.Msg }

// IsError reports whether err is a configuration error (exit status 2).
func IsError(err error) bool {
	var ce *Error
	return errors.As(err, &ce)
}

func bad(env, format string, args ...any) error {
	return &Error{Msg: env + ": " + fmt.Sprintf(format, args...)}
}

// maxStreamName is the longest JetStream stream name.
const maxStreamName = 255

// parseReason is a URL parser's error without the URL it may echo,
// password included.
func parseReason(err error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, "`: "); i >= 0 {
		msg = msg[i+3:]
	}
	return msg
}

// checkNATSURL accepts what the NATS client does: a comma-separated list
// of servers, each a nats://, tls://, ws:// or wss:// URL or a bare
// host:port.
func checkNATSURL(v string) error {
	for _, server := range strings.Split(v, ",") {
		server = strings.TrimSpace(server)
		if !strings.Contains(server, "://") {
			server = "nats://" + server
		}
		u, err := url.Parse(server)
		if err != nil || u.Host == "" {
			return fmt.Errorf("must be a nats:// URL or a comma-separated list of them, got %q", Redact(v))
		}
		switch u.Scheme {
		case "nats", "tls", "ws", "wss":
		default:
			return fmt.Errorf("a server must be nats://, tls://, ws:// or wss://, got %s://", u.Scheme)
		}
	}
	return nil
}

// Finish validates the values and returns the Config.
func (b *Binding) Finish() (*Config, error) {
	c := b.cfg
	n, err := strconv.ParseInt(strings.TrimSpace(b.maxBody), 10, 64)
	if err != nil || n <= 0 {
		return nil, bad("WT_MAX_BODY_BYTES", "must be a positive number of bytes, got %q", b.maxBody)
	}
	c.MaxBodyBytes = n
	if u, err := url.Parse(c.DatabaseURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, bad("DATABASE_URL", "must be a postgres:// URL")
	}
	if _, err := pgxpool.ParseConfig(c.DatabaseURL); err != nil {
		return nil, bad("DATABASE_URL", "is not a valid Postgres URL: %s", parseReason(err))
	}
	if err := migrations.ValidSchema(c.Schema); err != nil {
		return nil, bad("WT_DB_SCHEMA", "%v", err)
	}
	if u, err := url.Parse(c.RedisURL); err != nil || (u.Scheme != "redis" && u.Scheme != "rediss" && u.Scheme != "unix") {
		return nil, bad("REDIS_URL", "must be a redis:// or rediss:// URL")
	}
	if _, err := redis.ParseURL(c.RedisURL); err != nil {
		return nil, bad("REDIS_URL", "%s", strings.TrimPrefix(parseReason(err), "redis: "))
	}
	if err := checkNATSURL(c.NATSURL); err != nil {
		return nil, bad("NATS_URL", "%v", err)
	}
	if _, port, err := net.SplitHostPort(c.HTTPAddr); err != nil {
		return nil, bad("WT_HTTP_ADDR", "must be host:port, got %q", c.HTTPAddr)
	} else if _, err := net.LookupPort("tcp", port); err != nil {
		return nil, bad("WT_HTTP_ADDR", "has no valid port (0 to 65535), got %q", c.HTTPAddr)
	}
	if c.RedisPrefix == "" {
		return nil, bad("WT_REDIS_PREFIX", "must not be empty")
	}
	if c.Stream == "" || strings.ContainsAny(c.Stream, " \t.*>/\\") {
		return nil, bad("WT_NATS_STREAM", "must be a stream name without spaces, '.', '*', '>' or slashes, got %q", c.Stream)
	}
	if len(c.Stream) > maxStreamName {
		return nil, bad("WT_NATS_STREAM", "must be at most %d characters, got %d", maxStreamName, len(c.Stream))
	}
	if c.SubjectPrefix == "" || strings.ContainsAny(c.SubjectPrefix, " \t.*>") {
		return nil, bad("WT_NATS_SUBJECT_PREFIX", "must be one subject token, got %q", c.SubjectPrefix)
	}
	if c.EventSource == "" {
		return nil, bad("WT_EVENT_SOURCE", "must not be empty")
	}
	if _, err := url.Parse(c.EventSource); err != nil || strings.ContainsFunc(c.EventSource, unicode.IsSpace) {
		return nil, bad("WT_EVENT_SOURCE", "must be a URI reference such as /writethrough or https://example.com/orders, got %q", c.EventSource)
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		return nil, bad("WT_LOG_LEVEL", "must be debug, info, warn or error, got %q", c.LogLevel)
	}
	return c, nil
}

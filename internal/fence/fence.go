// Package fence owns every write writethrough makes to Redis. One Lua script,
// held here and nowhere else, applies an entity version to its cache hash only
// if the key is absent or holds a lower version, so the version a reader sees
// never goes backwards whatever order writers, the relay and fills arrive in.
//
// The hash format is the public one (CONTRACT §4): key
// "{prefix}{collection}:{id}", fields v (decimal version), d (data, JSON text)
// and u (updated_at). A tombstone has v and u but no d; it keeps the version so
// a late fill cannot resurrect a deleted value.
//
// Versions are compared as Lua numbers (doubles), exact below 2^53; entity
// versions grow by one per change and never get near that.
package fence

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// script is the one cache-write script.
//
// KEYS[1] the cache key.
// ARGV[1] mode: "f" fenced write, "r" repair conditioned on what the caller
//
//	saw, "x" delete conditioned on what the caller saw.
//
// ARGV[2] version, ARGV[3] updated_at, ARGV[4] "1" if the data is present,
// ARGV[5] data, ARGV[6] TTL in ms for a value (0 = none), ARGV[7] TTL in ms
// for a tombstone (0 = none). In modes r and x, ARGV[8] is the version the
// caller saw ("" = key absent) and ARGV[9] the data it saw ("\0" = none).
//
// Returns 1 when applied, 0 when fenced out (or, for r/x, when the key
// changed since the caller looked).
const script = `
local cur = redis.call('HMGET', KEYS[1], 'v', 'd')
local mode = ARGV[1]
if mode == 'f' then
  if cur[1] and tonumber(cur[1]) >= tonumber(ARGV[2]) then return 0 end
else
  local seenv, seend = ARGV[8], ARGV[9]
  local curv = cur[1] or ''
  local curd = cur[2] or '\0'
  if curv ~= seenv or curd ~= seend then return 0 end
  if mode == 'x' then
    redis.call('DEL', KEYS[1])
    return 1
  end
end
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 'u', ARGV[3], 'd', ARGV[5])
  if ARGV[6] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[6]) else redis.call('PERSIST', KEYS[1]) end
else
  redis.call('HDEL', KEYS[1], 'd')
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 'u', ARGV[3])
  if ARGV[7] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[7]) else redis.call('PERSIST', KEYS[1]) end
end
return 1
`

var lua = redis.NewScript(script)

// Outcome of one fenced write.
type Outcome int

const (
	// Applied means the version is now in Redis.
	Applied Outcome = iota + 1
	// FencedOut means Redis already held this version or a newer one (or, for
	// a conditioned repair, the key changed since the caller looked).
	FencedOut
	// Failed means the outcome is unknown: an error or timeout. Treat it as
	// pending; the fence makes a later repair safe.
	Failed
)

func (o Outcome) String() string {
	switch o {
	case Applied:
		return "applied"
	case FencedOut:
		return "fenced_out"
	default:
		return "failed"
	}
}

// Entry is one entity version to put in the cache.
type Entry struct {
	Collection string
	ID         string
	Version    int64
	// Data is the JSON text exactly as Postgres prints it; nil for a tombstone.
	Data      []byte
	UpdatedAt string
}

// Cached is what a key holds.
type Cached struct {
	Version   int64
	Data      []byte // nil for a tombstone
	UpdatedAt string
}

// Tombstone reports whether the cached entity is deleted.
func (c Cached) Tombstone() bool { return c.Data == nil }

// Config of a Fence. The zero value of each field means its default.
type Config struct {
	// Prefix of every key; default "wt:".
	Prefix string
	// ValueTTL expires cached values; 0 means none (the default).
	ValueTTL time.Duration
	// TombstoneTTL expires tombstones; default 24h. It must outlast the relay's
	// longest retry horizon.
	TombstoneTTL time.Duration
}

// Fence writes and reads cache hashes.
type Fence struct {
	rdb          redis.UniversalClient
	prefix       string
	valueTTL     string
	tombstoneTTL string
}

// New returns a Fence over rdb. The client must honour the deadlines of
// the contexts it is given (redis.Options.ContextTimeoutEnabled): the
// writer bounds every cache write and read by one, and without it a hung
// Redis would hold a write for the client's ReadTimeout (3 s by default)
// instead of the writer's CacheTimeout.
func New(rdb redis.UniversalClient, cfg Config) (*Fence, error) {
	if rdb == nil {
		return nil, errors.New("fence: nil redis client")
	}
	if !honoursDeadlines(rdb) {
		return nil, errors.New("fence: the redis client ignores context deadlines; set ContextTimeoutEnabled in its options")
	}
	if cfg.ValueTTL < 0 {
		return nil, errors.New("fence: ValueTTL must not be negative")
	}
	if cfg.TombstoneTTL < 0 {
		return nil, errors.New("fence: TombstoneTTL must not be negative")
	}
	return &Fence{
		rdb:          rdb,
		prefix:       cmp.Or(cfg.Prefix, "wt:"),
		valueTTL:     strconv.FormatInt(cfg.ValueTTL.Milliseconds(), 10),
		tombstoneTTL: strconv.FormatInt(cmp.Or(cfg.TombstoneTTL, 24*time.Hour).Milliseconds(), 10),
	}, nil
}

// honoursDeadlines reports whether rdb bounds its network calls by the
// context's deadline. Clients of other types are taken on trust.
func honoursDeadlines(rdb redis.UniversalClient) bool {
	switch c := rdb.(type) {
	case *redis.Client:
		return c.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		return c.Options().ContextTimeoutEnabled
	}
	return true
}

// Prefix returns the key prefix.
func (f *Fence) Prefix() string { return f.prefix }

// Client returns the Redis client.
func (f *Fence) Client() redis.UniversalClient { return f.rdb }

// Key returns the cache key of an entity.
func (f *Fence) Key(collection, id string) string {
	return f.prefix + collection + ":" + id
}

// SplitKey returns the collection and id of a cache key, false if key does
// not carry the prefix.
func (f *Fence) SplitKey(key string) (collection, id string, ok bool) {
	rest, ok := strings.CutPrefix(key, f.prefix)
	if !ok {
		return "", "", false
	}
	return strings.Cut(rest, ":")
}

func (f *Fence) args(mode string, e Entry) []any {
	has, data := "0", ""
	if e.Data != nil {
		has, data = "1", string(e.Data)
	}
	return []any{mode, strconv.FormatInt(e.Version, 10), e.UpdatedAt, has, data, f.valueTTL, f.tombstoneTTL}
}

// Apply writes each entry through the fence, pipelined, and returns one
// outcome per entry. err is the first error seen; entries whose outcome is
// Failed may or may not have been applied.
func (f *Fence) Apply(ctx context.Context, entries ...Entry) ([]Outcome, error) {
	out := make([]Outcome, len(entries))
	if len(entries) == 0 {
		return out, nil
	}
	if bout, ok, err := brokenApply(ctx, f, entries); ok {
		return bout, err
	}
	run := func() ([]*redis.Cmd, error) {
		cmds := make([]*redis.Cmd, len(entries))
		_, err := f.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, e := range entries {
				cmds[i] = lua.EvalSha(ctx, p, []string{f.Key(e.Collection, e.ID)}, f.args("f", e)...)
			}
			return nil
		})
		return cmds, err
	}
	cmds, err := run()
	if err != nil && isNoScript(err) {
		if err = lua.Load(ctx, f.rdb).Err(); err == nil {
			cmds, err = run()
		}
	}
	var first error
	for i, c := range cmds {
		if c == nil {
			out[i] = Failed
			continue
		}
		n, cerr := c.Int()
		switch {
		case cerr != nil:
			out[i] = Failed
			first = cmp.Or(first, cerr)
		case n == 1:
			out[i] = Applied
		default:
			out[i] = FencedOut
		}
	}
	if first == nil && err != nil {
		first = err
		for i := range out {
			out[i] = Failed
		}
	}
	if first != nil {
		return out, fmt.Errorf("fenced cache write: %w", first)
	}
	return out, nil
}

// Repair overwrites a key with e only if it still holds what the caller saw
// (seen nil: the key was absent). It is the on-call repair: it can fix a key
// whose version matches but whose data differs, and a concurrent newer write
// wins because the key no longer matches what was seen.
func (f *Fence) Repair(ctx context.Context, e Entry, seen *Cached) (Outcome, error) {
	return f.conditioned(ctx, "r", e, seen)
}

// DeleteIfUnchanged removes an orphan key only if it still holds what the
// caller saw.
func (f *Fence) DeleteIfUnchanged(ctx context.Context, collection, id string, seen *Cached) (Outcome, error) {
	return f.conditioned(ctx, "x", Entry{Collection: collection, ID: id}, seen)
}

func (f *Fence) conditioned(ctx context.Context, mode string, e Entry, seen *Cached) (Outcome, error) {
	args := f.args(mode, e)
	if seen == nil {
		args = append(args, "", "\x00")
	} else {
		d := "\x00"
		if seen.Data != nil {
			d = string(seen.Data)
		}
		args = append(args, strconv.FormatInt(seen.Version, 10), d)
	}
	n, err := lua.Run(ctx, f.rdb, []string{f.Key(e.Collection, e.ID)}, args...).Int()
	if err != nil {
		return Failed, fmt.Errorf("conditioned cache write: %w", err)
	}
	if n == 1 {
		return Applied, nil
	}
	return FencedOut, nil
}

// Get reads one key. ok is false on a miss.
func (f *Fence) Get(ctx context.Context, collection, id string) (c Cached, ok bool, err error) {
	vals, err := f.rdb.HMGet(ctx, f.Key(collection, id), "v", "d", "u").Result()
	if err != nil {
		return Cached{}, false, fmt.Errorf("read cache: %w", err)
	}
	return parse(vals)
}

// GetMany reads keys in one pipeline; the i-th result belongs to the i-th key.
func (f *Fence) GetMany(ctx context.Context, keys []string) ([]Cached, []bool, error) {
	cmds := make([]*redis.SliceCmd, len(keys))
	_, err := f.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.HMGet(ctx, k, "v", "d", "u")
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("read cache: %w", err)
	}
	out := make([]Cached, len(keys))
	hit := make([]bool, len(keys))
	for i, c := range cmds {
		out[i], hit[i], err = parse(c.Val())
		if err != nil {
			return nil, nil, err
		}
	}
	return out, hit, nil
}

func parse(vals []any) (Cached, bool, error) {
	if len(vals) != 3 || vals[0] == nil {
		return Cached{}, false, nil
	}
	vs, _ := vals[0].(string)
	v, err := strconv.ParseInt(vs, 10, 64)
	if err != nil {
		return Cached{}, false, fmt.Errorf("cache hash has a bad version %q", vs)
	}
	c := Cached{Version: v}
	if d, ok := vals[1].(string); ok {
		c.Data = []byte(d)
	}
	c.UpdatedAt, _ = vals[2].(string)
	return c, true, nil
}

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

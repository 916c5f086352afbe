package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// baselineHandler is the least a cache-hit read can do: one HMGET of the
// key, and the entity fields written back as JSON. The API's cache-hit GET
// is measured against it.
func baselineHandler(rdb *redis.Client, key string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		vals, err := rdb.HMGet(r.Context(), key, "v", "d", "u").Result()
		if err != nil {
			http.Error(w, "redis: "+err.Error(), http.StatusBadGateway)
			return
		}
		v, _ := vals[0].(string)
		d, _ := vals[1].(string)
		u, _ := vals[2].(string)
		if v == "" || d == "" {
			http.NotFound(w, r)
			return
		}
		b := make([]byte, 0, 64+len(d))
		b = append(b, `{"version":`...)
		b = append(b, v...)
		b = append(b, `,"data":`...)
		b = append(b, d...)
		b = append(b, `,"updated_at":`...)
		b = strconv.AppendQuote(b, u)
		b = append(b, '}')
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		_, _ = w.Write(b)
	})
}

// serveBaseline serves baselineHandler on addr until ctx ends. The bench
// runs it in a process of its own, as the API runs in its own.
func serveBaseline(ctx context.Context, addr, redisURL, key string) error {
	opt, err := redis.ParseURL(redisURL)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: baselineHandler(rdb, key)}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

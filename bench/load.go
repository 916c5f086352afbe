package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"
)

// load is a closed-loop HTTP load: Conns workers, each with its own
// keep-alive connection, send one request after another. Requests that
// complete during the measuring window, after the warm-up, are counted.
type load struct {
	// Conns is the number of concurrent workers and connections.
	Conns int
	// Warmup runs before measuring; Duration is the measuring window.
	Warmup, Duration time.Duration
	// Request builds the n-th request of a worker. Its URL must be on the
	// loopback interface.
	Request func(worker, n int) (*http.Request, error)
	// Check inspects a response; an error counts the request as failed.
	Check func(*http.Response) error
}

// loadResult is what a load measured.
type loadResult struct {
	Requests int // completed in the window, failed ones included
	Failed   int
	FirstErr error
	Elapsed  time.Duration
	RPS      float64
	P50, P90 time.Duration
	P99      time.Duration
}

func (r loadResult) String() string {
	return fmt.Sprintf("%.0f req/s, p50 %s, p90 %s, p99 %s, %d requests, %d failed",
		r.RPS, ms(r.P50), ms(r.P90), ms(r.P99), r.Requests, r.Failed)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond)) }

var errNotLoopback = errors.New("load: target is not on the loopback interface")

func loopback(u *url.URL) bool {
	host := u.Hostname()
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (l load) run(ctx context.Context) (loadResult, error) {
	if l.Conns < 1 || l.Duration <= 0 {
		return loadResult{}, errors.New("load: Conns and Duration must be positive")
	}
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        l.Conns,
		MaxIdleConnsPerHost: l.Conns,
		MaxConnsPerHost:     l.Conns,
		DisableCompression:  true,
		IdleConnTimeout:     time.Minute,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}

	start := time.Now()
	from := start.Add(l.Warmup)
	until := from.Add(l.Duration)
	ctx, cancel := context.WithDeadline(ctx, until.Add(30*time.Second))
	defer cancel()

	type tally struct {
		lat      []time.Duration
		failed   int
		firstErr error
		err      error
	}
	tallies := make([]tally, l.Conns)
	var wg sync.WaitGroup
	for w := range l.Conns {
		wg.Go(func() {
			t := &tallies[w]
			t.lat = make([]time.Duration, 0, 1<<14)
			for n := 0; ; n++ {
				if ctx.Err() != nil {
					t.err = ctx.Err()
					return
				}
				req, err := l.Request(w, n)
				if err != nil {
					t.err = err
					return
				}
				if !loopback(req.URL) {
					t.err = errNotLoopback
					return
				}
				req = req.WithContext(ctx)
				t0 := time.Now()
				if !t0.Before(until) {
					return
				}
				err = l.do(client, req)
				t1 := time.Now()
				if t1.Before(from) || t1.After(until) {
					continue
				}
				t.lat = append(t.lat, t1.Sub(t0))
				if err != nil {
					t.failed++
					if t.firstErr == nil {
						t.firstErr = err
					}
				}
			}
		})
	}
	wg.Wait()

	var res loadResult
	var all []time.Duration
	for _, t := range tallies {
		if t.err != nil {
			return loadResult{}, t.err
		}
		all = append(all, t.lat...)
		res.Failed += t.failed
		if res.FirstErr == nil {
			res.FirstErr = t.firstErr
		}
	}
	res.Requests = len(all)
	res.Elapsed = l.Duration
	res.RPS = float64(res.Requests) / l.Duration.Seconds()
	slices.Sort(all)
	res.P50, res.P90, res.P99 = quantile(all, 0.50), quantile(all, 0.90), quantile(all, 0.99)
	return res, nil
}

func (l load) do(client *http.Client, req *http.Request) error {
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var checkErr error
	if l.Check != nil {
		checkErr = l.Check(resp)
	}
	// Read the whole body so the connection is reused.
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	return checkErr
}

// quantile of sorted durations (nearest rank).
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// wantStatus returns a Check that accepts only the given status codes.
func wantStatus(codes ...int) func(*http.Response) error {
	return func(r *http.Response) error {
		if slices.Contains(codes, r.StatusCode) {
			return nil
		}
		return fmt.Errorf("status %d", r.StatusCode)
	}
}

//go:build chaos

package writer

import (
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"syscall"
)

// Crash points of the write path, for the consistency suite (internal/chaos):
//
//	writer-after-commit  committed, the cache not yet written
//	writer-after-cache   the cache written, the caller not yet answered
//
// WT_CRASHPOINT names the point (or "*" for every point);
// WT_CRASHPOINT_PROB is the chance per pass (default 1); WT_CRASHPOINT_SEED
// seeds the draw (default random). The process kills itself with SIGKILL.
// The same variables drive the relay's crash points.
var crashRand = sync.OnceValue(func() *rand.Rand {
	seed, err := strconv.ParseUint(os.Getenv("WT_CRASHPOINT_SEED"), 10, 64)
	if err != nil {
		seed = rand.Uint64()
	}
	return rand.New(rand.NewPCG(seed, seed^0x5851f42d4c957f2d))
})

var crashMu sync.Mutex

func crashpoint(name string) {
	want := os.Getenv("WT_CRASHPOINT")
	if want == "" || (want != name && want != "*") {
		return
	}
	p := 1.0
	if s := os.Getenv("WT_CRASHPOINT_PROB"); s != "" {
		if v, err := strconv.ParseFloat(s, 64); err == nil {
			p = v
		}
	}
	crashMu.Lock()
	hit := crashRand().Float64() < p
	crashMu.Unlock()
	if !hit {
		return
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	os.Exit(137)
}

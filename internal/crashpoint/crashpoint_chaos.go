//go:build chaos

package crashpoint

import (
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"syscall"
)

var crashRand = sync.OnceValue(func() *rand.Rand {
	seed, err := strconv.ParseUint(os.Getenv("WT_CRASHPOINT_SEED"), 10, 64)
	if err != nil {
		seed = rand.Uint64()
	}
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
})

var crashMu sync.Mutex

// Hit kills the process when WT_CRASHPOINT names this point and the draw
// allows it.
func Hit(name string) {
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

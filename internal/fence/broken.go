//go:build !chaos

package fence

import "context"

// brokenApply is the seam for the consistency suite's deliberately broken
// variants (broken_chaos.go, build tag chaos only). In every other build it
// declines, and Apply always goes through the script.
func brokenApply(context.Context, *Fence, []Entry) ([]Outcome, bool, error) {
	return nil, false, nil
}

//go:build chaos

package chaos

// chaosTag: built with -tags chaos (make chaos), so TestChaosFull runs.
const chaosTag = true

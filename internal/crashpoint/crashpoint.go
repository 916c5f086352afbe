//go:build !chaos

package crashpoint

// Hit marks a crash point; without the chaos build tag it does nothing.
func Hit(string) {}

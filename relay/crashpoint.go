//go:build !chaos

package relay

// crashpoint marks a place where the fault-injection build (tag chaos) may
// kill the process. Without the tag it does nothing.
func crashpoint(string) {}

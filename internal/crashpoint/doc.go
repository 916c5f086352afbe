// Package crashpoint marks the dangerous places of the write path and the
// relay where the consistency suite (internal/chaos) kills the process:
//
//	writer-after-commit  committed, the cache not yet written
//	writer-after-cache   the cache written, the caller not yet answered
//	relay-after-publish  events acknowledged by JetStream, not yet marked
//	relay-after-repair   cache repaired, entries not yet marked
//
// Only a build with the tag chaos can crash. There WT_CRASHPOINT names the
// point (or "*" for every point), WT_CRASHPOINT_PROB is the chance per pass
// (default 1) and WT_CRASHPOINT_SEED seeds the draw (default random); a hit
// kills the process with SIGKILL. The release build's Hit does nothing.
package crashpoint

package writer

import "time"

// SetGroupStall changes how long a group may take before it stops holding
// back new groups.
func SetGroupStall(w *Writer, d time.Duration) { w.group.stall = d }

// GroupQueued is how many writes wait for a group.
func GroupQueued(w *Writer) int {
	w.group.mu.Lock()
	defer w.group.mu.Unlock()
	return len(w.group.queue)
}

// GroupState is what the committer counts: groups in flight (and callers
// about to lead), keys held by groups in flight, and queued writes. At rest
// all three are zero.
func GroupState(w *Writer) (running, inflight, queued int) {
	w.group.mu.Lock()
	defer w.group.mu.Unlock()
	return w.group.running, len(w.group.inflight), len(w.group.queue)
}

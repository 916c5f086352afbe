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

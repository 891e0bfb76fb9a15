package health

import "time"

// SetClock replaces h's clock, for tests of the backlog interval.
func SetClock(h *Handler, now func() time.Time) { h.now = now }

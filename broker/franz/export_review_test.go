package franz

import "time"

// SetMaxRequeueDelay sets, for a test that does not run in parallel, the
// cap of a RequeueAfter delay, and returns a func that restores it.
func SetMaxRequeueDelay(d time.Duration) (restore func()) {
	old := maxRequeueDelay
	maxRequeueDelay = d
	return func() { maxRequeueDelay = old }
}

// WaitClientsClosed waits until the kgo clients' Close calls, and the wait
// for the calls in progress, that a Close cut short by its ctx left running
// in the background have returned.
func WaitClientsClosed(s *Source) { s.bg.Wait() }

package kafka

// RetryBookkeeping returns, for the tests, how many records the tier
// consumers of s keep track of beside their ready queues and lanes (the
// timers of held records), over all tiers. Once every retry record was handed out and settled it
// must be 0: an entry left holds its record, body included.
func RetryBookkeeping(s *Source) int {
	if s.retry == nil {
		return 0
	}
	n := 0
	for _, t := range s.retry.tiers {
		t.src.mu.Lock()
		n += len(t.src.tier.holds)
		t.src.mu.Unlock()
	}
	return n
}

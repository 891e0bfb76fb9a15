package franz

// RetryBookkeeping returns, for the tests, how many records the tier
// consumers of s hold on timers (records not due yet), over all tiers.
// Once every retry record was handed out and settled it must be 0: an
// entry left holds its record, body included.
func RetryBookkeeping(s *Source) int {
	if s.retry == nil {
		return 0
	}
	n := 0
	for _, t := range s.retry.tiers {
		t.src.mu.Lock()
		n += len(t.src.timers)
		t.src.mu.Unlock()
	}
	return n
}

// PauseStates returns, for the tests, whether s is paused and whether each
// of its tier consumers is.
func PauseStates(s *Source) (main bool, tiers []bool) {
	s.mu.Lock()
	main = s.paused
	s.mu.Unlock()
	if s.retry == nil {
		return main, nil
	}
	for _, t := range s.retry.tiers {
		t.src.mu.Lock()
		tiers = append(tiers, t.src.paused)
		t.src.mu.Unlock()
	}
	return main, tiers
}

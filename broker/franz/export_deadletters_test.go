package franz

import "context"

// CloseSourceDeadLettersForTest runs what a Source's Close runs for its
// dead letters (deadLetterState.close).
func CloseSourceDeadLettersForTest(ctx context.Context, s *Source) error { return s.dl.close(ctx) }

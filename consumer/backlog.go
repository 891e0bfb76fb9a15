package consumer

// backlogCache holds the last backlog the source reported. Filled in by the
// Backlog work of issue 10 (item 3).
type backlogCache struct{}

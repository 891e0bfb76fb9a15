package broker

import "context"

// Backlog is what waits for a consumer at the broker.
type Backlog struct {
	// Messages is the number of messages waiting: the queue's ready messages
	// (RabbitMQ, memory), or the consumer group's lag summed over its
	// partitions (Kafka).
	Messages int64 `json:"messages"`
	// Consumers is the number of consumers subscribed to the queue, or -1
	// when the broker does not say (Kafka).
	Consumers int `json:"consumers"`
	// Partitions is the lag per partition (Kafka: the high-water mark minus
	// the committed offset); nil for a queue.
	Partitions map[int]int64 `json:"partitions,omitempty"`
}

// A BacklogReporter is a Source that can ask its broker what waits for it.
// Backlog calls the broker: it may block, bounded by ctx, and callers that
// ask often should go through the consumer's cached Backlog instead.
type BacklogReporter interface {
	Backlog(ctx context.Context) (Backlog, error)
}

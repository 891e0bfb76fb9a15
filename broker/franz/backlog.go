package franz

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/queuekit/queuekit/broker"
)

var _ broker.BacklogReporter = (*Source)(nil)

// PartitionLag is the consumer lag of one partition.
type PartitionLag struct {
	// Partition is the partition's id.
	Partition int
	// Committed is the group's committed offset, or -1 if none.
	Committed int64
	// HighWatermark is the offset the next produced record will get.
	HighWatermark int64
	// Lag is HighWatermark - Committed; with no commit yet, the records the
	// group would still read from StartOffset.
	Lag int64
}

// Lag returns the group's lag on every partition of the topic, read from
// the brokers (committed offsets, log start offsets and high-water marks,
// through kadm), so it covers partitions owned by other members too. It
// calls the brokers, bounded by ctx.
//
// After Close began, Lag returns an error wrapping broker.ErrSourceClosed
// without calling the brokers; a call in progress when Close began is
// cancelled if Close's ctx ends first.
func (s *Source) Lag(ctx context.Context) ([]PartitionLag, error) {
	ctx, leave, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("franz: lag: %w", err)
	}
	defer leave()
	topic := s.cfg.Topic
	ends, err := s.adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("franz: lag: list end offsets: %w", err)
	}
	starts, err := s.adm.ListStartOffsets(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("franz: lag: list start offsets: %w", err)
	}
	committed, err := s.adm.FetchOffsetsForTopics(ctx, s.cfg.GroupID, topic)
	// A group that never committed may not exist yet: that is "no commits".
	if err != nil && !errors.Is(err, kerr.GroupIDNotFound) {
		return nil, fmt.Errorf("franz: lag: fetch offsets: %w", err)
	}
	var out []PartitionLag
	for id, end := range ends[topic] {
		if end.Err != nil {
			return nil, fmt.Errorf("franz: lag: end offset of partition %d: %w", id, end.Err)
		}
		pl := PartitionLag{Partition: int(id), Committed: -1, HighWatermark: end.Offset}
		if c, ok := committed.Lookup(topic, id); ok && c.Err == nil && c.At >= 0 {
			pl.Committed = c.At
			pl.Lag = end.Offset - c.At
		} else if c.Err != nil && !errors.Is(c.Err, kerr.GroupIDNotFound) {
			return nil, fmt.Errorf("franz: lag: committed offset of partition %d: %w", id, c.Err)
		} else if s.cfg.StartOffset == FirstOffset {
			st, ok := starts.Lookup(topic, id)
			if !ok || st.Err != nil {
				return nil, fmt.Errorf("franz: lag: start offset of partition %d unknown", id)
			}
			pl.Lag = end.Offset - st.Offset
		}
		pl.Lag = max(pl.Lag, 0)
		out = append(out, pl)
	}
	if len(out) == 0 {
		if err := ends.Error(); err != nil {
			return nil, fmt.Errorf("franz: lag: %w", err)
		}
		return nil, fmt.Errorf("franz: lag: topic %s: %w", topic, kerr.UnknownTopicOrPartition)
	}
	slices.SortFunc(out, func(a, b PartitionLag) int { return a.Partition - b.Partition })
	return out, nil
}

// Backlog implements broker.BacklogReporter: Messages is the group's lag
// summed over the topic's partitions, Partitions the lag per partition (as
// Lag reads it), and Consumers is -1: Kafka does not say how many members
// read a topic. After Close began, the error wraps broker.ErrSourceClosed.
func (s *Source) Backlog(ctx context.Context) (broker.Backlog, error) {
	l, err := s.Lag(ctx)
	if err != nil {
		return broker.Backlog{}, err
	}
	b := broker.Backlog{Consumers: -1, Partitions: make(map[int]int64, len(l))}
	for _, p := range l {
		b.Messages += p.Lag
		b.Partitions[p.Partition] = p.Lag
	}
	return b, nil
}

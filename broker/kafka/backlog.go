package kafka

import (
	"context"
	"errors"
	"fmt"

	kafkago "github.com/segmentio/kafka-go"

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

// Lag returns the group's lag on every partition of the topic, read from the
// brokers (committed offsets and high-water marks), so it covers partitions
// owned by other members too. It says more than Backlog, which sums it up:
// each partition's committed offset and high-water mark, for an operator
// who needs to know where the group stands, not only how far behind. Lag
// calls the brokers (three requests), bounded by ctx.
//
// After Close began, Lag returns an error wrapping broker.ErrSourceClosed
// without calling the brokers; a call in progress when Close began is
// cancelled if Close's ctx ends first.
func (s *Source) Lag(ctx context.Context) ([]PartitionLag, error) {
	ctx, leave, err := s.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("kafka: lag: %w", err)
	}
	defer leave()
	topic := s.cfg.Topic
	md, err := s.lagCli.Metadata(ctx, &kafkago.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("kafka: lag: metadata: %w", err)
	}
	var ids []int
	for _, t := range md.Topics {
		if t.Name != topic {
			continue
		}
		if t.Error != nil {
			return nil, fmt.Errorf("kafka: lag: metadata: %w", t.Error)
		}
		for _, p := range t.Partitions {
			ids = append(ids, p.ID)
		}
	}
	reqs := make([]kafkago.OffsetRequest, 0, 2*len(ids))
	for _, id := range ids {
		reqs = append(reqs, kafkago.FirstOffsetOf(id), kafkago.LastOffsetOf(id))
	}
	lo, err := s.lagCli.ListOffsets(ctx, &kafkago.ListOffsetsRequest{Topics: map[string][]kafkago.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("kafka: lag: list offsets: %w", err)
	}
	of, err := s.lagCli.OffsetFetch(ctx, &kafkago.OffsetFetchRequest{GroupID: s.cfg.GroupID, Topics: map[string][]int{topic: ids}})
	if err != nil {
		return nil, fmt.Errorf("kafka: lag: offset fetch: %w", err)
	}
	// A group that never committed may not exist yet: that is "no commits".
	if of.Error != nil && !errors.Is(of.Error, kafkago.GroupIdNotFound) {
		return nil, fmt.Errorf("kafka: lag: offset fetch: %w", of.Error)
	}
	committed := make(map[int]int64, len(ids))
	for _, p := range of.Topics[topic] {
		if p.Error != nil && !errors.Is(p.Error, kafkago.GroupIdNotFound) {
			return nil, fmt.Errorf("kafka: lag: offset fetch partition %d: %w", p.Partition, p.Error)
		}
		committed[p.Partition] = p.CommittedOffset
	}
	out := make([]PartitionLag, 0, len(ids))
	for _, p := range lo.Topics[topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("kafka: lag: list offsets partition %d: %w", p.Partition, p.Error)
		}
		c, ok := committed[p.Partition]
		if !ok || c < 0 {
			c = -1
		}
		pl := PartitionLag{Partition: p.Partition, Committed: c, HighWatermark: p.LastOffset}
		switch {
		case c >= 0:
			pl.Lag = p.LastOffset - c
		case s.cfg.StartOffset == kafkago.FirstOffset:
			pl.Lag = p.LastOffset - p.FirstOffset
		}
		out = append(out, pl)
	}
	sortLag(out)
	return out, nil
}

// Backlog implements broker.BacklogReporter: Messages is the group's lag
// summed over the topic's partitions, Partitions the lag per partition (as
// Lag reads it, so it covers partitions owned by other members too), and
// Consumers is -1: Kafka does not say how many members read a topic.
// After Close began, the error wraps broker.ErrSourceClosed (see Lag).
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

func sortLag(l []PartitionLag) {
	for i := 1; i < len(l); i++ {
		for j := i; j > 0 && l[j].Partition < l[j-1].Partition; j-- {
			l[j], l[j-1] = l[j-1], l[j]
		}
	}
}

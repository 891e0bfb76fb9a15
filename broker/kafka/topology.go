package kafka

import (
	"context"
	"errors"
	"fmt"
	"strings"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/queuekit/queuekit/broker"
)

var _ broker.TopologyDeclarer = (*Source)(nil)

// Topology says how DeclareTopology creates the topics a Source uses.
type Topology struct {
	// Partitions is the partition count of the topic, of its dead-letter
	// topic and of its retry topics (Config.RetryTopics). Zero means the
	// broker's default (num.partitions).
	Partitions int
	// ReplicationFactor is the number of replicas of each partition. Zero
	// means the broker's default (default.replication.factor).
	ReplicationFactor int
}

// DeclareTopology implements broker.TopologyDeclarer: it creates the
// consumed topic (Config.Topic), its dead-letter topic
// (Config.DeadLetterTopic) and its retry topics (Config.RetryTopics), all
// with the partitions and replication of
// Config.Topology. It is idempotent: a topic that exists is left as it is,
// its partitions and replication neither checked nor changed. It calls the
// cluster's controller, bounded by ctx (and by Config.Timeout), and returns
// the first error the broker gave for a topic, naming it. The Source does
// not call it by itself: call it before the first Receive to create the
// topics or fail early.
//
// After Close began, DeclareTopology returns an error wrapping
// broker.ErrSourceClosed without calling the cluster; a call in progress
// when Close began is cancelled if Close's ctx ends first.
func (s *Source) DeclareTopology(ctx context.Context) error {
	names := append([]string{s.cfg.Topic, s.cfg.DeadLetterTopic}, s.retryTopicNames()...)
	for _, name := range names {
		if err := validTopicName(name); err != nil {
			return fmt.Errorf("kafka: declare topology: %w", err)
		}
	}
	ctx, leave, err := s.enter(ctx)
	if err != nil {
		return fmt.Errorf("kafka: declare topology: %w", err)
	}
	defer leave()
	t := s.cfg.Topology
	np, rf := t.Partitions, t.ReplicationFactor
	if np == 0 {
		np = -1 // the broker's default
	}
	if rf == 0 {
		rf = -1
	}
	var topics []kafkago.TopicConfig
	for _, name := range names {
		topics = append(topics, kafkago.TopicConfig{Topic: name, NumPartitions: np, ReplicationFactor: rf})
	}
	resp, err := s.lagCli.CreateTopics(ctx, &kafkago.CreateTopicsRequest{Topics: topics})
	if err != nil {
		return fmt.Errorf("kafka: declare topology: create topics %s: %w", strings.Join(names, ", "), err)
	}
	for _, tc := range topics {
		if err := resp.Errors[tc.Topic]; err != nil && !errors.Is(err, kafkago.TopicAlreadyExists) {
			return fmt.Errorf("kafka: declare topology: create topic %s: %w", tc.Topic, err)
		}
	}
	return nil
}

package franz

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/queuekit/queuekit/broker"
)

var _ broker.TopologyDeclarer = (*Source)(nil)

// Topology says how DeclareTopology creates the topics a Source uses.
type Topology struct {
	// Partitions is the partition count of the topic, of its
	// dead-letter topic and of its retry topics. Zero means the broker's
	// default (num.partitions).
	Partitions int
	// ReplicationFactor is the number of replicas of each partition. Zero
	// means the broker's default (default.replication.factor).
	ReplicationFactor int
}

// DeclareTopology implements broker.TopologyDeclarer: it creates the
// consumed topic (Config.Topic), its dead-letter topic
// (Config.DeadLetterTopic) and its retry topics (Config.RetryTopics, see
// RetryTopicName), with the partitions and replication of
// Config.Topology. It is idempotent: a topic that exists is left as it is,
// its partitions and replication neither checked nor changed. It calls the
// cluster's controller (kadm's CreateTopics), bounded by ctx, and returns
// the first error the broker gave for a topic, naming it. The Source does
// not call it by itself: call it before the first Receive to create the
// topics or fail early.
//
// After Close began, DeclareTopology returns an error wrapping
// broker.ErrSourceClosed without calling the cluster; a call in progress
// when Close began is cancelled if Close's ctx ends first.
func (s *Source) DeclareTopology(ctx context.Context) error {
	ctx, leave, err := s.enter(ctx)
	if err != nil {
		return fmt.Errorf("franz: declare topology: %w", err)
	}
	defer leave()
	names := append([]string{s.cfg.Topic, s.cfg.DeadLetterTopic}, s.retryTopicNames()...)
	np, rf := int32(s.cfg.Topology.Partitions), int16(s.cfg.Topology.ReplicationFactor)
	if np == 0 {
		np = -1 // the broker's default
	}
	if rf == 0 {
		rf = -1
	}
	resps, err := s.adm.CreateTopics(ctx, np, rf, nil, names...)
	if err != nil {
		return fmt.Errorf("franz: declare topology: create topics %s: %w", strings.Join(names, ", "), err)
	}
	for _, name := range names {
		r, ok := resps[name]
		if !ok {
			return fmt.Errorf("franz: declare topology: create topic %s: no answer for it", name)
		}
		if r.Err != nil && !errors.Is(r.Err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("franz: declare topology: create topic %s: %w", name, r.Err)
		}
	}
	return nil
}

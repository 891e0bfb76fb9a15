package rabbitmq

import (
	"context"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
)

var (
	_ broker.Source           = (*Source)(nil)
	_ broker.Pauser           = (*Source)(nil)
	_ broker.StatusReporter   = (*Source)(nil)
	_ broker.EventSource      = (*Source)(nil)
	_ broker.BacklogReporter  = (*Source)(nil)
	_ broker.TopologyDeclarer = (*Source)(nil)
)

// Backlog implements broker.BacklogReporter: Messages is the number of
// messages ready in the source's queue (not those delivered and not yet
// acknowledged), Consumers the number of consumers subscribed to it, and
// Partitions nil. It asks the broker with a passive queue declaration on a
// short-lived channel of the source's connection (never on the consuming
// channel: a passive declaration of a missing queue closes its channel, and
// its NOT_FOUND is the error then). It dials if the source has not yet.
//
// Each call is a round trip to the broker: callers that ask often go through
// the consumer's cached Backlog. When ctx ends first it returns an error
// wrapping ctx's; the declaration then finishes in the background, and
// Close waits for it (bounded by Close's own context).
func (s *Source) Backlog(ctx context.Context) (broker.Backlog, error) {
	type result struct {
		q   amqp.Queue
		err error
	}
	if !s.beginOp() {
		return broker.Backlog{}, fmt.Errorf("rabbitmq: backlog of queue %q: %w", s.cfg.Queue, broker.ErrSourceClosed)
	}
	res := make(chan result, 1)
	go func() {
		defer s.ops.Done()
		ch, err := s.conn.channel()
		if err != nil {
			res <- result{err: err}
			return
		}
		defer ch.Close()
		q, err := ch.QueueDeclarePassive(s.cfg.Queue, false, false, false, false, nil)
		res <- result{q: q, err: err}
	}()
	select {
	case r := <-res:
		if r.err != nil {
			return broker.Backlog{}, fmt.Errorf("rabbitmq: backlog of queue %q: %w", s.cfg.Queue, r.err)
		}
		return broker.Backlog{Messages: int64(r.q.Messages), Consumers: r.q.Consumers}, nil
	case <-ctx.Done():
		return broker.Backlog{}, fmt.Errorf("rabbitmq: backlog of queue %q: %w", s.cfg.Queue, ctx.Err())
	}
}

// DeclareTopology implements broker.TopologyDeclarer: it makes sure that the
// source's queue and the rest of its Config.Topology exist, as the source
// does by itself each time it connects (with Topology.Passive it only
// checks), on short-lived channels of the source's connection, dialling if
// the source has not yet. Call it before publishing to the queue from a
// program that also consumes it, so that the first publishes are not
// returned as unroutable before the source has connected, and to fail early
// on a topology the broker refuses. A program that only publishes uses the
// package-level DeclareTopology.
//
// Its errors are those of the package-level DeclareTopology: broker.IsFatal
// is true for those retrying cannot fix. When ctx ends first it returns an
// error wrapping ctx's; the declarations then finish in the background, and
// Close waits for them (bounded by Close's own context). After Close it
// returns an error wrapping broker.ErrSourceClosed.
func (s *Source) DeclareTopology(ctx context.Context) error {
	if !s.beginOp() {
		return fmt.Errorf("rabbitmq: declare the topology of queue %q: %w", s.cfg.Queue, broker.ErrSourceClosed)
	}
	defer s.ops.Done()
	if err := ctx.Err(); err != nil {
		return err
	}
	return declareOn(ctx, s.conn, s.cfg.Queue, &s.cfg.Topology, &s.ops)
}

// beginOp counts an operation of the source's own that Close must wait for,
// unless the source is closed (it then returns false). The caller calls
// s.ops.Done when the operation is done.
func (s *Source) beginOp() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.ops.Add(1)
	return true
}

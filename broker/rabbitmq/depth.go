package rabbitmq

import (
	"context"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
)

// QueueDepth reports the messages ready in the source's queue and the
// consumers subscribed to it, from a passive queue declare on a short-lived
// channel of the source's connection (never on the consuming channel: a
// passive declare of a missing queue closes its channel). It satisfies
// middleware/prometheus's DepthSource, whose collector rate-limits the calls.
//
// It returns ctx's error when ctx ends first; the declare then finishes in
// the background, bounded by the dial timeout.
func (s *Source) QueueDepth(ctx context.Context) (messages, consumers int, err error) {
	type result struct {
		q   amqp.Queue
		err error
	}
	res := make(chan result, 1)
	go func() {
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
			return 0, 0, fmt.Errorf("rabbitmq: queue depth of %q: %w", s.cfg.Queue, r.err)
		}
		return r.q.Messages, r.q.Consumers, nil
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
}

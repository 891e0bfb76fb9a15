package main

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/retry"
)

// IdempotencyKeyHeader is the message header that Dedup reads by default:
// the producer puts there a key naming the operation (the payment, the
// email), the same on every publish of that operation.
const IdempotencyKeyHeader = "idempotency-key"

// Dedup returns middleware that runs the handler at most once successfully
// per idempotency key: a delivery whose key store says was processed is
// skipped and acknowledged. Brokers deliver at least once — an ack lost with
// a dropped connection, or a producer that published again after a timeout,
// brings a message back — so a handler with an effect that must not happen
// twice (a card charge, an email) needs this.
//
// key returns the delivery's idempotency key; nil means
// HeaderKey(IdempotencyKeyHeader). The key must be set by the producer, the
// same on every publish of one operation and different for different
// operations. Never key on broker.Message.ID as the adapters fill it in:
// when the producer set no ID, the memory broker makes up "<queue>-<n>" and
// RabbitMQ "<queue>/<session>.<delivery tag>" (they restart in every
// process, so two different messages get the same one, and with a shared
// Store the second is skipped and acknowledged: lost), Kafka's
// topic/partition/offset differs for a record produced twice, and the
// RabbitMQ Publisher gives every publish a fresh random message-id. A
// delivery without a key (key returns "") is passed through: handled
// normally, without deduplication.
//
// The key is marked processed only when the handler returned nil. A failed
// delivery is not marked, so its redelivery runs the handler again; a
// handler that panicked releases its claim too.
//
// Like every middleware it is a constructor returning a consumer.Middleware,
// and it passes ctx down without keeping it. Put it inside Log, Metrics and
// Recover, and outside Retry and Timeout (see run). A nil store is a
// mistake that retrying cannot fix: every keyed delivery fails with a
// permanent error (dead-lettered, not lost), and the handler does not run.
func Dedup(store Store, key func(*broker.Message) string) consumer.Middleware {
	if key == nil {
		key = HeaderKey(IdempotencyKeyHeader)
	}
	return func(next consumer.Handler) consumer.Handler {
		return consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			k := key(m)
			if k == "" {
				return next.Handle(ctx, m)
			}
			if store == nil {
				return retry.Permanent(errNoStore)
			}
			done, end, err := store.Begin(ctx, k)
			if err != nil {
				return fmt.Errorf("dedup: key %q: %w", k, err)
			}
			if done {
				// middleware.Logger carries the message's attributes
				// because Dedup runs inside middleware.Log.
				middleware.Logger(ctx).Info("duplicate skipped: already processed", "idempotency_key", k)
				return nil
			}
			processed := false
			// Deferred, so that a panic below (recovered by Recover, outside)
			// does not leave the key claimed forever.
			defer func() { end(processed) }()
			err = next.Handle(ctx, m)
			processed = err == nil
			return err
		})
	}
}

var errNoStore = errors.New("dedup: nil Store")

// HeaderKey returns a key function for Dedup that reads the message header
// name. A message without that header, or with it empty, has no key and is
// not deduplicated.
func HeaderKey(name string) func(*broker.Message) string {
	return func(m *broker.Message) string { return m.Header[name] }
}

// A Store records which idempotency keys were processed.
//
// Begin claims key. If key was processed already it reports done. Otherwise
// the caller owns the claim and must call end exactly once, with whether it
// processed the message; until then, Begin for the same key waits (or
// returns ctx's error), so that two deliveries of one operation never run at
// once.
//
// ProcessedSet is an in-memory Store, good for one process. Several replicas
// need a shared one (a table keyed by idempotency key, or Redis SET NX with a
// TTL). Strongest of all is to write the key in the same database transaction
// as the handler's effect, so that the two cannot part: a middleware cannot
// do that for you, and a crash between the effect and end(true) lets one
// duplicate through. Give each handler its own Store (or prefix the keys):
// two handlers sharing one would skip each other's messages.
type Store interface {
	Begin(ctx context.Context, key string) (done bool, end func(processed bool), err error)
}

// ProcessedSet is an in-memory Store that remembers the last Capacity keys
// processed: memory stays bounded however long the queue is, and a
// duplicate arriving after Capacity newer messages is processed again. Make
// it larger than the number of messages that can arrive between a message and
// its redelivery.
//
// It is safe for concurrent use. Use NewProcessedSet.
type ProcessedSet struct {
	mu       sync.Mutex
	done     map[string]struct{}
	ring     []string // processed keys, oldest at next once full
	next     int
	inflight map[string]chan struct{} // closed when the claim ends
}

// NewProcessedSet returns a ProcessedSet remembering up to capacity keys.
func NewProcessedSet(capacity int) (*ProcessedSet, error) {
	if capacity < 1 {
		return nil, fmt.Errorf("dedup: capacity %d: want at least 1", capacity)
	}
	return &ProcessedSet{
		done:     make(map[string]struct{}, capacity),
		ring:     make([]string, 0, capacity),
		inflight: make(map[string]chan struct{}),
	}, nil
}

// Begin implements Store.
func (s *ProcessedSet) Begin(ctx context.Context, key string) (bool, func(bool), error) {
	for {
		s.mu.Lock()
		if _, ok := s.done[key]; ok {
			s.mu.Unlock()
			return true, nil, nil
		}
		busy, ok := s.inflight[key]
		if !ok {
			ch := make(chan struct{})
			s.inflight[key] = ch
			s.mu.Unlock()
			var once sync.Once
			return false, func(processed bool) { once.Do(func() { s.end(key, ch, processed) }) }, nil
		}
		s.mu.Unlock()
		// Another delivery with the same key is being handled (a
		// redelivery or a second publish raced the first one): wait for
		// its outcome.
		select {
		case <-busy:
		case <-ctx.Done():
			return false, nil, context.Cause(ctx)
		}
	}
}

func (s *ProcessedSet) end(key string, ch chan struct{}, processed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.inflight, key)
	close(ch)
	if !processed {
		return
	}
	if len(s.ring) < cap(s.ring) {
		s.ring = append(s.ring, key)
	} else {
		delete(s.done, s.ring[s.next])
		s.ring[s.next] = key
		s.next = (s.next + 1) % len(s.ring)
	}
	s.done[key] = struct{}{}
}

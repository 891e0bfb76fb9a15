package main

import (
	"context"
	"fmt"
	"sync"

	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
)

// Dedup returns middleware that runs the handler at most once successfully
// per message ID: a delivery whose ID store says was processed is skipped and
// acknowledged. Brokers deliver at least once — an ack lost with a dropped
// connection, or a producer that published again after a timeout, brings a
// message back — so a handler with an effect that must not happen twice (a
// card charge, an email) needs this.
//
// The ID is marked processed only when the handler returned nil. A failed
// delivery is not marked, so its redelivery runs the handler again; a
// handler that panicked releases its claim too. A delivery with no ID is
// passed through.
//
// Like every middleware it is a constructor returning a consumer.Middleware,
// and it passes ctx down without keeping it. Put it inside Log, Metrics and
// Recover, and outside Retry and Timeout (see run).
func Dedup(store Store) consumer.Middleware {
	return func(next consumer.Handler) consumer.Handler {
		return consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) error {
			if m.ID == "" {
				return next.Handle(ctx, m)
			}
			done, end, err := store.Begin(ctx, m.ID)
			if err != nil {
				return fmt.Errorf("dedup: %w", err)
			}
			if done {
				// middleware.Logger carries the message's attributes
				// because Dedup runs inside middleware.Log.
				middleware.Logger(ctx).Info("duplicate skipped: already processed")
				return nil
			}
			processed := false
			// Deferred, so that a panic below (recovered by Recover, outside)
			// does not leave the ID claimed forever.
			defer func() { end(processed) }()
			err = next.Handle(ctx, m)
			processed = err == nil
			return err
		})
	}
}

// A Store records which message IDs were processed.
//
// Begin claims id. If id was processed already it reports done. Otherwise
// the caller owns the claim and must call end exactly once, with whether it
// processed the message; until then, Begin for the same id waits (or returns
// ctx's error), so that two deliveries of one message never run at once.
//
// ProcessedSet is an in-memory Store, good for one process. Several replicas
// need a shared one (a table keyed by message ID, or Redis SET NX with a
// TTL). Strongest of all is to write the ID in the same database transaction
// as the handler's effect, so that the two cannot part: a middleware cannot do
// that for you, and a crash between the effect and end(true) lets one
// duplicate through.
type Store interface {
	Begin(ctx context.Context, id string) (done bool, end func(processed bool), err error)
}

// ProcessedSet is an in-memory Store that remembers the last Capacity IDs
// processed: memory stays bounded however long the queue is, and a
// duplicate arriving after Capacity newer messages is processed again. Make
// it larger than the number of messages that can arrive between a message and
// its redelivery.
//
// It is safe for concurrent use. Use NewProcessedSet.
type ProcessedSet struct {
	mu       sync.Mutex
	done     map[string]struct{}
	ring     []string // processed IDs, oldest at next once full
	next     int
	inflight map[string]chan struct{} // closed when the claim ends
}

// NewProcessedSet returns a ProcessedSet remembering up to capacity IDs.
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
func (s *ProcessedSet) Begin(ctx context.Context, id string) (bool, func(bool), error) {
	for {
		s.mu.Lock()
		if _, ok := s.done[id]; ok {
			s.mu.Unlock()
			return true, nil, nil
		}
		busy, ok := s.inflight[id]
		if !ok {
			ch := make(chan struct{})
			s.inflight[id] = ch
			s.mu.Unlock()
			var once sync.Once
			return false, func(processed bool) { once.Do(func() { s.end(id, ch, processed) }) }, nil
		}
		s.mu.Unlock()
		// Another delivery of the same message is being handled (a
		// redelivery raced the first one): wait for its outcome.
		select {
		case <-busy:
		case <-ctx.Done():
			return false, nil, context.Cause(ctx)
		}
	}
}

func (s *ProcessedSet) end(id string, ch chan struct{}, processed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.inflight, id)
	close(ch)
	if !processed {
		return
	}
	if len(s.ring) < cap(s.ring) {
		s.ring = append(s.ring, id)
	} else {
		delete(s.done, s.ring[s.next])
		s.ring[s.next] = id
		s.next = (s.next + 1) % len(s.ring)
	}
	s.done[id] = struct{}{}
}

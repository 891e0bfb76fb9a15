package main

import (
	"sync"

	"github.com/queuekit/queuekit/consumer"
)

// settlements tracks which messages had their final settlement: acknowledged,
// or dead-lettered (and confirmed in the dead-letter queue). Requeues are not
// final.
type settlements struct {
	mu    sync.Mutex
	final map[string]bool
	want  []string                   // set by expect
	done  chan struct{}              // closed once every ID of want is final
	acks  map[string][]chan struct{} // see expectAck
}

func newSettlements() *settlements {
	return &settlements{final: map[string]bool{}, done: make(chan struct{}), acks: map[string][]chan struct{}{}}
}

func (s *settlements) add(id string, st consumer.Settlement) {
	if st != consumer.SettledAck && st != consumer.SettledDeadLetter {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.final[id] = true
	if st == consumer.SettledAck {
		for _, ch := range s.acks[id] {
			close(ch)
		}
		delete(s.acks, id)
	}
	s.check()
}

// expectAck returns a channel closed once a message with this id is
// acknowledged after the call (a redriven copy of a dead letter).
func (s *settlements) expectAck(id string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := make(chan struct{})
	s.acks[id] = append(s.acks[id], ch)
	return ch
}

// expect returns a channel closed once every one of ids is settled.
func (s *settlements) expect(ids []string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.want = ids
	s.check()
	return s.done
}

// check closes done when the wanted IDs are all final. s.mu is held.
func (s *settlements) check() {
	if s.want == nil {
		return
	}
	for _, id := range s.want {
		if !s.final[id] {
			return
		}
	}
	select {
	case <-s.done:
	default:
		close(s.done)
	}
}

func (s *settlements) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.final)
}

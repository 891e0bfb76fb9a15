package main

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/queuekit/queuekit/consumer"
)

// summary is what happened to the batch.
type summary struct {
	Queue     string
	Published []string // message IDs, in publish order
	// Handled maps the ID of every order the ledger took to the attempt on
	// which it succeeded.
	Handled map[string]int
	// DeadLetters are read back from the dead-letter queue (at most
	// maxShown of them), with the reason the runtime wrote in their headers.
	DeadLetters []deadLetter
	// DeadLettersQueued is how many messages the dead-letter queue held
	// when they were read.
	DeadLettersQueued int
	// Interrupted is true when ctx ended (Ctrl-C) before every message was
	// settled.
	Interrupted bool

	mu sync.Mutex // guards Handled, which the workers write
}

type deadLetter struct {
	ID        string
	Attempts  int
	Permanent bool
	Error     string
}

func (s *summary) record(id string, attempt int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Handled[id] = attempt
}

func (s *summary) print(out *printer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, 0, len(s.Handled))
	for id := range s.Handled {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out.printf("summary:\n")
	out.printf("  published:     %d\n", len(s.Published))
	out.printf("  handled:       %d (%s)\n", len(ids), strings.Join(ids, ", "))
	if s.DeadLettersQueued > len(s.DeadLetters) {
		out.printf("  dead-lettered: %d in %s.dlq, the first %d read back:\n", s.DeadLettersQueued, s.Queue, len(s.DeadLetters))
	} else {
		out.printf("  dead-lettered: %d, read back from %s.dlq:\n", len(s.DeadLetters), s.Queue)
	}
	for _, d := range s.DeadLetters {
		kind := "budget spent"
		if d.Permanent {
			kind = "permanent"
		}
		attempts := "1 attempt"
		if d.Attempts != 1 {
			attempts = strconv.Itoa(d.Attempts) + " attempts"
		}
		out.printf("    %s after %s, %s: %s\n", d.ID, attempts, kind, d.Error)
	}
}

func describe(s consumer.Settlement) string {
	switch s {
	case consumer.SettledAck:
		return "handled, acknowledged"
	case consumer.SettledDelayedRequeue:
		return "failed, sent to the retry queue"
	case consumer.SettledRequeue:
		return "failed, requeued"
	case consumer.SettledDeadLetter:
		return "dead-lettered"
	}
	return s.String()
}

// printer serialises writes from the workers and main.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) printf(format string, a ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format, a...)
}

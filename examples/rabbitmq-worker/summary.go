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
	// Redriven are the orders a -redrive run sent back after the fix.
	Redriven []string
	// RedrivenHandled maps the ID of every order the ledger took that was
	// a redriven copy to its x-queuekit-redriven count.
	RedrivenHandled map[string]int
	// Interrupted is true when ctx ended (Ctrl-C) before every message was
	// settled.
	Interrupted bool

	mu sync.Mutex // guards Handled, which the workers write
}

// deadLetter is what the summary shows of a dead letter.
type deadLetter struct {
	ID        string // the order's message ID
	Attempts  int
	Permanent bool
	Error     string
	Redriven  int // times redriven before this dead-lettering
}

// String reads as "order-9 after 3 attempts, budget spent: panic: …".
func (d deadLetter) String() string {
	kind := "budget spent"
	if d.Permanent {
		kind = "permanent"
	}
	attempts := "1 attempt"
	if d.Attempts != 1 {
		attempts = strconv.Itoa(d.Attempts) + " attempts"
	}
	switch {
	case d.Redriven == 1:
		attempts += " (redriven once before)"
	case d.Redriven > 1:
		attempts += fmt.Sprintf(" (redriven %d times before)", d.Redriven)
	}
	return fmt.Sprintf("%s after %s, %s: %s", d.ID, attempts, kind, d.Error)
}

func (s *summary) record(id string, attempt, redriven int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Handled[id] = attempt
	if redriven > 0 {
		if s.RedrivenHandled == nil {
			s.RedrivenHandled = map[string]int{}
		}
		s.RedrivenHandled[id] = redriven
	}
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
		out.printf("    %s\n", d)
	}
	if len(s.Redriven) > 0 {
		var how []string
		for _, id := range s.Redriven {
			how = append(how, fmt.Sprintf("%s handled on attempt %d, x-queuekit-redriven %d", id, s.Handled[id], s.RedrivenHandled[id]))
		}
		out.printf("  redriven:      %d after the fix (%s)\n", len(s.Redriven), strings.Join(how, "; "))
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

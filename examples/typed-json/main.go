// Command typed-json shows a typed handler with consumer.JSON: each message
// body is decoded into a Signup struct before the handler sees it. A body that
// does not decode (malformed JSON, a field of the wrong type) is a permanent
// error, and so is a Signup that fails validation (the handler returns
// retry.Permanent): such messages are dead-lettered on their first delivery,
// never retried, with the reason in their headers. A second consumer reads the
// dead-letter queue back and prints those reasons.
//
//	go run ./examples/typed-json
//
// It runs on the embedded in-memory broker, with no set-up.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/mail"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/retry"
)

// Signup is the payload of the "signups" queue.
type Signup struct {
	Email string `json:"email"`
	Plan  string `json:"plan"`
	Seats int    `json:"seats"`
}

// Validate reports everything wrong with s, on one line (it ends up in a
// message header). Decoding checks only that the JSON is well formed and the
// types match; what the values mean is for the program to check.
func (s Signup) Validate() error {
	var problems []string
	if _, err := mail.ParseAddress(s.Email); err != nil {
		problems = append(problems, fmt.Sprintf("email %q is not an address", s.Email))
	}
	if s.Plan != "free" && s.Plan != "pro" {
		problems = append(problems, fmt.Sprintf("plan %q is not free or pro", s.Plan))
	}
	if s.Seats < 1 || s.Seats > 500 {
		problems = append(problems, fmt.Sprintf("seats %d is not between 1 and 500", s.Seats))
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// payloads is what the producers sent, by message ID.
var payloads = []struct{ id, body string }{
	{"s-1", `{"email":"ada@example.com","plan":"pro","seats":5}`},
	{"s-2", `{"email":"bob@example.com","plan":"free"`},               // malformed: cut off
	{"s-3", `{"email":"cy@example.com","plan":"pro","seats":"five"}`}, // wrong type
	{"s-4", `{"email":"dee.example.com","plan":"gold","seats":0}`},    // decodes, fails validation
	{"s-5", `{"email":"eve@example.com","plan":"free","seats":1}`},
	{"s-6", `null`}, // no Signup at all: consumer.JSON refuses it like a decode failure
	{"s-7", `{"email":"fay@example.com","plan":"pro","seats":3,"x":1}`}, // unknown fields are ignored
}

func main() {
	// The library installs no signal handlers: the program owns them.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// middleware.Log reports each failed message at Warn on stderr.
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := run(ctx, os.Stdout, logger); err != nil {
		fmt.Fprintln(os.Stderr, "typed-json:", err)
		os.Exit(1)
	}
}

// run publishes the payloads, consumes them and the dead letters they cause,
// stops when every message is settled (or ctx ends), and prints the outcome.
func run(ctx context.Context, out io.Writer, logger *slog.Logger) error {
	b := memory.NewBroker()
	defer b.Close()
	// The payloads are published as they are, broken ones included: a
	// producer with a well-formed value would use broker.PublishJSON.
	pub := b.Publisher()
	defer pub.Close(context.Background())
	for _, p := range payloads {
		if err := pub.Publish(ctx, "signups", &broker.Message{ID: p.id, Body: []byte(p.body)}); err != nil {
			return err
		}
	}

	var (
		mu      sync.Mutex
		saved   []string // what the handler stored
		letters []string // what the dead-letter consumer read
		calls   atomic.Int64
		reached = map[string]bool{} // message IDs the typed function saw
	)

	// The typed handler: consumer.JSON decodes the body into a Signup, and
	// dead-letters it at once, without calling this function, if it does not
	// decode. Validation failures are permanent too: retrying will not fix
	// them. Any other error (say, the database is down) is not marked, and
	// is retried.
	signups := consumer.JSON(func(ctx context.Context, m *broker.Message, s Signup) error {
		calls.Add(1)
		mu.Lock()
		reached[m.ID] = true
		mu.Unlock()
		if err := s.Validate(); err != nil {
			return retry.Permanent(fmt.Errorf("invalid signup: %w", err))
		}
		mu.Lock()
		saved = append(saved, fmt.Sprintf("%s: %s, plan %s, seats %d", m.ID, s.Email, s.Plan, s.Seats))
		mu.Unlock()
		return nil
	})
	h := consumer.Chain(
		middleware.Log(logger),
		middleware.Recover(),
		// Retry lets permanent errors through at once: no in-process retries.
		middleware.Retry(retry.MaxAttempts(retry.Exponential(10*time.Millisecond, 100*time.Millisecond), 3)),
		middleware.Timeout(5*time.Second),
	)(signups)

	// The dead-letter queue is an ordinary queue. What to do with it is up
	// to you (alert, park, fix and re-publish); here a consumer reads each
	// dead letter's reason from its headers.
	deadLetters := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		mu.Lock()
		letters = append(letters, fmt.Sprintf("%s from %s, attempts=%s, permanent=%s\n      %s",
			m.ID, m.Header[broker.HeaderSource], m.Header[broker.HeaderAttempts],
			m.Header[broker.HeaderPermanent], m.Header[broker.HeaderError]))
		mu.Unlock()
		return nil
	})

	sup := &consumer.Supervisor{Logger: logger}
	for _, c := range []struct {
		queue string
		h     consumer.Handler
	}{{"signups", h}, {memory.DeadLetterQueue("signups"), deadLetters}} {
		src, err := b.Source(c.queue, memory.SourceConfig{Prefetch: 4})
		if err != nil {
			return err
		}
		cons, err := consumer.New(src, c.h,
			consumer.WithConcurrency(4),
			consumer.WithLogger(logger),
		)
		if err != nil {
			return err
		}
		if err := sup.Add(c.queue, cons); err != nil {
			return err
		}
	}

	// Stop once every signup is settled and every dead letter read.
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-t.C:
				st, dl := b.Stats("signups"), b.Stats(memory.DeadLetterQueue("signups"))
				if st.Acked+st.DeadLettered == len(payloads) && dl.Acked == st.DeadLettered {
					cancel()
					return
				}
			}
		}
	}()
	if err := sup.Run(runCtx); err != nil {
		return err
	}

	// Handlers ran concurrently: sort for a stable report.
	slices.Sort(saved)
	slices.Sort(letters)
	st := b.Stats("signups")
	fmt.Fprintf(out, "signups: %d published, %d delivered, %d requeued, %d acked, %d dead-lettered\n",
		st.Published, st.Delivered, st.Requeued, st.Acked, st.DeadLettered)
	fmt.Fprintf(out, "the Signup handler was called %d times: the %d bodies that did not decode never reached it\n",
		calls.Load(), len(payloads)-len(reached))
	fmt.Fprintf(out, "\nsaved (%d):\n", len(saved))
	for _, s := range saved {
		fmt.Fprintln(out, "  "+s)
	}
	fmt.Fprintf(out, "\nread back from %s (%d):\n", memory.DeadLetterQueue("signups"), len(letters))
	for _, l := range letters {
		fmt.Fprintln(out, "  "+l)
	}
	return nil
}

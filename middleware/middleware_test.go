package middleware_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/retry"
)

var msg = &broker.Message{ID: "m1", Topic: "orders", Attempt: 2}

func TestChainOrderFirstListedIsOutermost(t *testing.T) {
	var trace []string
	mw := func(name string) consumer.Middleware {
		return func(next consumer.Handler) consumer.Handler {
			return consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
				trace = append(trace, name)
				return next.Handle(ctx, m)
			})
		}
	}
	h := consumer.Chain(mw("a"), mw("b"), nil, mw("c"))(consumer.HandlerFunc(func(context.Context, *broker.Message) error {
		trace = append(trace, "h")
		return nil
	}))
	_ = h.Handle(context.Background(), msg)
	if got := strings.Join(trace, ","); got != "a,b,c,h" {
		t.Errorf("Chain(a, b, nil, c)(h) ran %s; want a,b,c,h", got)
	}
}

func TestRecoverTurnsAPanicIntoAPanicErrorWithStack(t *testing.T) {
	h := middleware.Recover()(consumer.HandlerFunc(func(context.Context, *broker.Message) error {
		panic("nil map")
	}))
	err := h.Handle(context.Background(), msg)
	var pe *consumer.PanicError
	if !errors.As(err, &pe) || pe.Value != "nil map" || !bytes.Contains(pe.Stack, []byte("middleware_test")) {
		t.Fatalf("Handle = %v; want a *PanicError with the value and a stack", err)
	}
	if err.Error() != "panic: nil map" || middleware.Outcome(err) != "panic" {
		t.Errorf("Error() = %q, Outcome = %q; want \"panic: nil map\", \"panic\"", err.Error(), middleware.Outcome(err))
	}
}

// Retry(Timeout(h)): each attempt gets its own deadline, so a slow first
// attempt does not doom the second (Watermill #467).
func TestRetryOutsideTimeoutGivesEachAttemptItsOwnDeadline(t *testing.T) {
	calls := 0
	var ctxs []context.Context
	h := consumer.Chain(
		middleware.Retry(retry.MaxAttempts(retry.Constant(time.Millisecond), 3)),
		middleware.Timeout(20*time.Millisecond),
	)(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		calls++
		ctxs = append(ctxs, ctx)
		if calls == 1 {
			<-ctx.Done() // too slow: times out
			return ctx.Err()
		}
		if ctx.Err() != nil {
			t.Errorf("attempt %d started with a done context: %v", calls, ctx.Err())
		}
		return nil
	}))
	if err := h.Handle(context.Background(), msg); err != nil || calls != 2 {
		t.Fatalf("Handle = %v after %d calls; want success on the second attempt", err, calls)
	}
	if cause := context.Cause(ctxs[0]); !errors.Is(cause, middleware.ErrHandlerTimeout) {
		t.Errorf("first attempt's cause = %v; want ErrHandlerTimeout", cause)
	}
	if ctxs[0] == ctxs[1] {
		t.Error("both attempts got the same context; want one each")
	}
}

func TestRetryStopsWhenTheHandlerContextIsDone(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	calls := 0
	h := middleware.Retry(retry.MaxAttempts(retry.Constant(time.Hour), 10))(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		calls++
		cancel(consumer.ErrDrainTimeout)
		return errors.New("busy")
	}))
	if err := h.Handle(ctx, msg); err == nil || calls != 1 {
		t.Errorf("Handle = %v after %d calls; want the error after 1 call once the drain deadline cancelled ctx", err, calls)
	}
}

func TestTimeoutWrapsTheHandlerErrorWhenItsTimeIsUp(t *testing.T) {
	h := middleware.Timeout(10 * time.Millisecond)(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		<-ctx.Done()
		return ctx.Err()
	}))
	err := h.Handle(context.Background(), msg)
	if !errors.Is(err, middleware.ErrHandlerTimeout) || !errors.Is(err, context.DeadlineExceeded) || middleware.Outcome(err) != "timeout" {
		t.Errorf("Handle = %v; want ErrHandlerTimeout wrapping DeadlineExceeded, outcome timeout", err)
	}
	if h := middleware.Timeout(0)(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if _, ok := ctx.Deadline(); ok {
			t.Error("Timeout(0) set a deadline; want none")
		}
		return nil
	})); h.Handle(context.Background(), msg) != nil {
		t.Error("Timeout(0) handler failed")
	}
}

func TestLogWritesOneStructuredLinePerMessage(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h := middleware.Log(l)(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		middleware.Logger(ctx).Info("charging")
		return retry.Permanent(errors.New("bad card"))
	}))
	_ = h.Handle(context.Background(), msg)
	out := buf.String()
	for _, want := range []string{
		"msg=charging topic=orders message_id=m1 attempt=2",
		"level=WARN msg=\"queuekit: message handled\" topic=orders message_id=m1 attempt=2 outcome=permanent",
		"error=\"bad card\"",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log output lacks %q:\n%s", want, out)
		}
	}
}

type recorder struct {
	mu      sync.Mutex
	started int
	done    map[string]int
}

func (r *recorder) HandlerStarted(*broker.Message) { r.mu.Lock(); r.started++; r.mu.Unlock() }
func (r *recorder) HandlerDone(m *broker.Message, err error, d time.Duration) {
	r.mu.Lock()
	r.done[middleware.Outcome(err)]++
	r.mu.Unlock()
}

func TestMetricsReportsEveryCallWithItsOutcome(t *testing.T) {
	rec := &recorder{done: map[string]int{}}
	errs := []error{nil, errors.New("x"), nil, retry.Permanent(errors.New("y"))}
	i := 0
	h := middleware.Metrics(rec)(consumer.HandlerFunc(func(context.Context, *broker.Message) error {
		err := errs[i]
		i++
		return err
	}))
	for range errs {
		_ = h.Handle(context.Background(), msg)
	}
	if rec.started != 4 || rec.done["ok"] != 2 || rec.done["error"] != 1 || rec.done["permanent"] != 1 {
		t.Errorf("recorder saw started %d, done %v; want 4 and ok 2, error 1, permanent 1", rec.started, rec.done)
	}
}

func TestMetricsEndsTheMeasurementWhenAPanicPassesThrough(t *testing.T) {
	rec := &recorder{done: map[string]int{}}
	h := consumer.Chain(middleware.Recover(), middleware.Metrics(rec))(consumer.HandlerFunc(func(context.Context, *broker.Message) error {
		panic("boom")
	}))
	if err := h.Handle(context.Background(), msg); middleware.Outcome(err) != "panic" {
		t.Fatalf("Handle = %v; want the panic, recovered outside Metrics", err)
	}
	if rec.started != 1 || rec.done["panic"] != 1 {
		t.Errorf("recorder saw started %d, done %v; want 1 and panic 1", rec.started, rec.done)
	}
}

// Under a Consumer, every line of Log and of the handler's own Logger(ctx)
// carries the consumer's name with the message's attributes.
func TestLogLinesCarryTheConsumerName(t *testing.T) {
	var buf syncBuffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b := memory.NewBroker()
	_ = b.Publish(context.Background(), "invoices", &broker.Message{ID: "inv-1"})
	src, err := b.Source("invoices", memory.SourceConfig{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := middleware.Log(l)(consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		middleware.Logger(ctx).Info("billing")
		cancel()
		return nil
	}))
	c, err := consumer.New(src, h, consumer.WithName("billing"), consumer.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Run(ctx); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		"msg=billing consumer=billing topic=invoices message_id=inv-1 attempt=1",
		"msg=\"queuekit: message handled\" consumer=billing topic=invoices message_id=inv-1 attempt=1 outcome=ok",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log output lacks %q:\n%s", want, out)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

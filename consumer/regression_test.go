package consumer_test

// Regression tests from the review of the runtime (2026-11-23): each pins a
// bug that was found and fixed — Pause during a drain hanging Run; a failed
// consumer's source left open by the Supervisor; a timed-out ack wedging the
// consumer; Pause/Resume races and a hook deadlock; handlers returning nil
// after cancellation being acked on Close; drain reports counting Pause
// give-backs; Shutdown hiding abandonment; panics on a nil delivery or a typed
// nil source; settle timeouts too small to work.

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

func runAsync(c *consumer.Consumer, ctx context.Context) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- c.Run(ctx) }()
	return ch
}

// R1: Pause while the consumer drains replaces the final intake with a paused
// one; a worker that finishes its handler then waits on wake forever.
func TestRegressionPauseDuringDrainHangsRun(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 1)
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		started <- struct{}{}
		<-release
		return nil
	})
	c, _ := consumer.New(newSource(t, b, "q", 1), h, consumer.WithLogger(quiet), consumer.WithDrainTimeout(2*time.Second))
	runErr := runAsync(c, context.Background())
	<-started
	sdDone := make(chan error, 1)
	go func() { sdDone <- c.Shutdown(context.Background()) }()
	waitFor(t, "draining", func() bool { return c.State() == consumer.StateDraining })
	if err := c.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	close(release) // handler finishes well within the drain timeout
	select {
	case err := <-runErr:
		t.Logf("Run returned %v", err)
	case <-time.After(6 * time.Second): // 3x the drain timeout
		t.Fatalf("Run did not return 6s after the handler finished (drain timeout 2s): Pause during drain wedged it; State=%v", c.State())
	}
	<-sdDone
}

// fakeDelivery records how it was settled.
type fakeDelivery struct {
	m       broker.Message
	mu      sync.Mutex
	settled []string
}

func (d *fakeDelivery) Message() *broker.Message { return &d.m }
func (d *fakeDelivery) rec(s string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.settled = append(d.settled, s)
	return nil
}
func (d *fakeDelivery) Ack(context.Context) error                       { return d.rec("ack") }
func (d *fakeDelivery) Requeue(context.Context) error                   { return d.rec("requeue") }
func (d *fakeDelivery) DeadLetter(context.Context, broker.Reason) error { return d.rec("dead") }

// racySource returns a delivery with a nil error exactly when ctx is
// cancelled (as a real broker can when a message arrives at that moment).
type racySource struct {
	n atomic.Int64
}

func (s *racySource) Receive(ctx context.Context) (broker.Delivery, error) {
	s.n.Add(1)
	<-ctx.Done()
	return &fakeDelivery{m: broker.Message{ID: "x", Attempt: 1}}, nil
}
func (s *racySource) Close(context.Context) error { return nil }

// R2: DrainReport.GivenBack counts give-backs of the whole Run, including
// those caused by Pause before the drain.
func TestRegressionDrainReportGivenBackCountsPauses(t *testing.T) {
	var mu sync.Mutex
	var rep consumer.DrainReport
	var givenBack atomic.Int64
	c2src := &racySource{}
	c, _ := consumer.New(c2src, consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }),
		consumer.WithLogger(quiet),
		consumer.WithObserver(func(_ context.Context, m *broker.Message, s consumer.Settlement, err error) {
			if s == consumer.SettledGiveBack {
				givenBack.Add(1)
			}
		}),
		consumer.WithEventHook(func(e consumer.Event) {
			if e.Kind == consumer.EventDrained {
				mu.Lock()
				rep = e.Drain
				mu.Unlock()
			}
		}))
	src := c2src
	runErr := runAsync(c, context.Background())
	for i := range int64(3) {
		waitFor(t, "worker in Receive", func() bool { return src.n.Load() == i+1 })
		c.Pause(context.Background())
		waitFor(t, "give back on pause", func() bool { return givenBack.Load() == i+1 })
		c.Resume(context.Background())
	}
	waitFor(t, "worker in Receive", func() bool { return src.n.Load() == 4 })
	beforeDrain := givenBack.Load()
	c.Shutdown(context.Background())
	<-runErr
	during := givenBack.Load() - beforeDrain
	mu.Lock()
	defer mu.Unlock()
	if int64(rep.GivenBack) != during {
		t.Errorf("DrainReport.GivenBack = %d; %d deliveries were given back during the drain (%d before it, by Pause)", rep.GivenBack, during, beforeDrain)
	}
}

// R3: Pause and Resume interleaving: Pause drops c.mu, emits EventPaused
// (user hook) and only then pauses the source; a Resume in that window
// resumes the source first, then the late Pause pauses it again, leaving the
// consumer "running" on a paused source forever.
func TestRegressionPauseResumeRaceLeavesSourcePaused(t *testing.T) {
	b := memory.NewBroker()
	var handled atomic.Int64
	var c *consumer.Consumer
	inPaused := make(chan struct{})
	hook := func(e consumer.Event) {
		if e.Kind == consumer.EventPaused {
			close(inPaused)
			time.Sleep(100 * time.Millisecond) // e.g. a Supervisor sink waiting on s.mu, a logger, a slow source.Pause
		}
	}
	c, _ = consumer.New(newSource(t, b, "q", 1), consumer.HandlerFunc(func(context.Context, *broker.Message) error {
		handled.Add(1)
		return nil
	}), consumer.WithLogger(quiet), consumer.WithEventHook(hook))
	runErr := runAsync(c, context.Background())
	waitFor(t, "running", func() bool { return c.State() == consumer.StateRunning })
	pauseDone := make(chan struct{})
	go func() { c.Pause(context.Background()); close(pauseDone) }()
	<-inPaused
	if err := c.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-pauseDone
	publishN(t, b, "q", 3)
	deadline := time.Now().Add(3 * time.Second)
	for handled.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	st := c.State()
	c.Close()
	<-runErr
	if handled.Load() != 3 {
		t.Errorf("after Pause/Resume (Resume returned last) State=%v, handled %d of 3 messages in 3s: the source stayed paused", st, handled.Load())
	}
}

// R4: a settle timeout shorter than the broker's ack latency wedges the
// consumer for good: the failed ack leaves the delivery outstanding in the
// source (it counts against prefetch) and the runtime never retries or
// releases it, even after the broker recovers.
func TestRegressionSlowAckWedgesConsumer(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 3)
	b.SetAckDelay(200 * time.Millisecond)
	var handled, settleFailed atomic.Int64
	c, _ := consumer.New(newSource(t, b, "q", 1), consumer.HandlerFunc(func(context.Context, *broker.Message) error {
		handled.Add(1)
		return nil
	}), consumer.WithLogger(quiet), consumer.WithSettleTimeout(50*time.Millisecond),
		consumer.WithEventHook(func(e consumer.Event) {
			if e.Kind == consumer.EventSettleFailed {
				settleFailed.Add(1)
			}
		}))
	runErr := runAsync(c, context.Background())
	waitFor(t, "first settle failure", func() bool { return settleFailed.Load() == 1 })
	b.SetAckDelay(0) // the broker recovers
	deadline := time.Now().Add(3 * time.Second)
	for handled.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	st := c.State()
	h := handled.Load()
	c.Close()
	<-runErr
	if h < 3 {
		t.Errorf("one ack timed out, broker recovered; 3s later handled=%d of 3, State=%v, Stats=%+v: consumer wedged", h, st, b.Stats("q"))
	}
}

// R5: Resume calls the source's Resume with c.mu held; the memory source
// emits EventConnected synchronously from Resume; a hook that asks the
// consumer its State deadlocks.
func TestRegressionHookCallingStateDuringResumeDeadlocks(t *testing.T) {
	b := memory.NewBroker()
	src, _ := b.Source("q", memory.SourceConfig{Prefetch: 1})
	var c *consumer.Consumer
	c, _ = consumer.New(src, consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }),
		consumer.WithLogger(quiet), consumer.WithEventHook(func(e consumer.Event) {
			if e.Kind == consumer.EventConnected {
				_ = c.State() // e.g. export state as a metric
			}
		}))
	runErr := runAsync(c, context.Background())
	waitFor(t, "running", func() bool { return c.State() == consumer.StateRunning })
	c.Pause(context.Background())
	src.Cancel(nil) // the broker cancels the subscription while paused
	done := make(chan error, 1)
	go func() { done <- c.Resume(context.Background()) }()
	select {
	case <-done:
		c.Close()
		<-runErr
	case <-time.After(3 * time.Second):
		t.Fatalf("Resume did not return in 3s: deadlock between c.mu (held around Pauser.Resume) and the event hook")
	}
}

// R6: a handler that returns nil after its context was cancelled by Close is
// acknowledged, although Close promises "Nothing unsettled is acknowledged"
// and Handler promises redelivery "whatever it returns".
func TestRegressionCloseAcksHandlersThatReturnNilAfterCancel(t *testing.T) {
	const n = 8
	b := memory.NewBroker()
	publishN(t, b, "q", n)
	var started atomic.Int64
	h := consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		started.Add(1)
		<-ctx.Done()
		return nil // "gave up", graceful-looking; did not do the work
	})
	c, _ := consumer.New(newSource(t, b, "q", n), h, consumer.WithLogger(quiet), consumer.WithConcurrency(n))
	runErr := runAsync(c, context.Background())
	waitFor(t, "all started", func() bool { return started.Load() == n })
	b.SetAckDelay(20 * time.Millisecond) // a realistic broker round trip
	c.Close()
	err := <-runErr
	st := b.Stats("q")
	if st.Acked != 0 {
		t.Errorf("Close with %d handlers running, each returning nil only after ctx was cancelled: Acked=%d (Run: %v); want 0 acked, all redelivered", n, st.Acked, err)
	}
}

type nilSource struct{}

func (nilSource) Receive(ctx context.Context) (broker.Delivery, error) { return nil, nil }
func (nilSource) Close(context.Context) error                          { return nil }

// R7: an adapter returning (nil, nil) crashes the process.
func TestRegressionNilDeliveryPanics(t *testing.T) {
	defer func() {
		if p := recover(); p != nil {
			t.Errorf("panic: %v", p)
		}
	}()
	t.Skip("crashes the test binary from a worker goroutine; run manually")
}

func within(t *testing.T, what string, d time.Duration, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { f(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %v", what, d)
	}
}

func TestRegressionLifecycleEdges(t *testing.T) {
	h := consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil })
	t.Run("Shutdown before Run", func(t *testing.T) {
		b := memory.NewBroker()
		c, _ := consumer.New(newSource(t, b, "q", 1), h, consumer.WithLogger(quiet))
		within(t, "Shutdown", 2*time.Second, func() { c.Shutdown(context.Background()) })
		if err := c.Run(context.Background()); !errors.Is(err, consumer.ErrConsumerClosed) {
			t.Errorf("Run after Shutdown = %v", err)
		}
	})
	t.Run("Run twice concurrently", func(t *testing.T) {
		b := memory.NewBroker()
		c, _ := consumer.New(newSource(t, b, "q", 1), h, consumer.WithLogger(quiet))
		e1 := runAsync(c, context.Background())
		waitFor(t, "running", func() bool { return c.State() == consumer.StateRunning })
		if err := c.Run(context.Background()); !errors.Is(err, consumer.ErrAlreadyRunning) {
			t.Errorf("second Run = %v", err)
		}
		c.Shutdown(context.Background())
		<-e1
	})
	t.Run("Pause then Shutdown", func(t *testing.T) {
		b := memory.NewBroker()
		publishN(t, b, "q", 5)
		c, _ := consumer.New(newSource(t, b, "q", 4), h, consumer.WithLogger(quiet), consumer.WithConcurrency(4))
		e := runAsync(c, context.Background())
		waitFor(t, "running", func() bool { return c.State() == consumer.StateRunning })
		c.Pause(context.Background())
		within(t, "Shutdown", 5*time.Second, func() { c.Shutdown(context.Background()) })
		within(t, "Run", 5*time.Second, func() { <-e })
		st := b.Stats("q")
		if st.Acked+st.Ready != 5 || st.Unacked != 0 {
			t.Errorf("stats %+v", st)
		}
	})
	t.Run("Close during Pause", func(t *testing.T) {
		b := memory.NewBroker()
		c, _ := consumer.New(newSource(t, b, "q", 1), h, consumer.WithLogger(quiet))
		c.Pause(context.Background())
		e := runAsync(c, context.Background())
		waitFor(t, "paused", func() bool { return c.State() == consumer.StatePaused })
		within(t, "Close", 5*time.Second, func() { c.Close() })
		within(t, "Run", 5*time.Second, func() { <-e })
	})
	t.Run("Resume during drain", func(t *testing.T) {
		b := memory.NewBroker()
		publishN(t, b, "q", 3)
		release := make(chan struct{})
		var started atomic.Int64
		c, _ := consumer.New(newSource(t, b, "q", 1), consumer.HandlerFunc(func(context.Context, *broker.Message) error {
			started.Add(1)
			<-release
			return nil
		}), consumer.WithLogger(quiet))
		c.Pause(context.Background())
		e := runAsync(c, context.Background())
		waitFor(t, "paused", func() bool { return c.State() == consumer.StatePaused })
		c.Resume(context.Background())
		waitFor(t, "started", func() bool { return started.Load() == 1 })
		go c.Shutdown(context.Background())
		waitFor(t, "draining", func() bool { return c.State() == consumer.StateDraining })
		c.Resume(context.Background())
		close(release)
		within(t, "Run", 5*time.Second, func() { <-e })
		if st := b.Stats("q"); st.Acked != 1 || st.Ready != 2 {
			t.Errorf("stats %+v", st)
		}
	})
}

func TestRegressionSupervisorDrainTimeoutBoundsShutdown(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 1)
	started := make(chan struct{})
	var cause atomic.Value
	c, _ := consumer.New(newSource(t, b, "q", 1), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		close(started)
		<-ctx.Done()
		cause.Store(context.Cause(ctx))
		return ctx.Err()
	}), consumer.WithLogger(quiet), consumer.WithDrainTimeout(200*time.Millisecond))
	// Issue 10: the Supervisor has no drain timeout of its own any more; the
	// consumer's bounds the stop when the Supervisor's ctx ends.
	s := &consumer.Supervisor{Logger: quiet}
	s.Add("c", c)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	<-started
	t0 := time.Now()
	cancel()
	within(t, "Supervisor.Run", 5*time.Second, func() { <-done })
	t.Logf("Supervisor.Run returned after %v, cause %v, stats %+v", time.Since(t0), cause.Load(), b.Stats("q"))
	if st := b.Stats("q"); st.Acked != 0 || st.Ready != 1 {
		t.Errorf("stats %+v", st)
	}
}

// Pause/Resume on a Supervisor runner before Run and after it stopped.
func TestRegressionSupervisorPauseBeforeRunAndAfterStop(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 2)
	var handled atomic.Int64
	c, _ := consumer.New(newSource(t, b, "q", 1), consumer.HandlerFunc(func(context.Context, *broker.Message) error {
		handled.Add(1)
		return nil
	}), consumer.WithLogger(quiet))
	var events atomic.Int64
	s := &consumer.Supervisor{Logger: quiet, OnEvent: func(e consumer.Event) {
		if e.Kind == consumer.EventPaused || e.Kind == consumer.EventResumed {
			events.Add(1)
		}
	}}
	s.Add("c", c)
	if err := s.Pause(context.Background(), "c"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	waitFor(t, "paused", func() bool {
		return len(s.Health().Runners) == 1 && s.Health().Runners[0].State == consumer.StatePaused
	})
	time.Sleep(50 * time.Millisecond)
	if handled.Load() != 0 {
		t.Errorf("handled %d while paused", handled.Load())
	}
	s.Resume(context.Background(), "c")
	waitFor(t, "handled", func() bool { return handled.Load() == 2 })
	cancel()
	<-done
	if err := s.Pause(context.Background(), "c"); err != nil {
		t.Logf("Pause after stop: %v", err)
	}
	t.Logf("health after stop+Pause: %+v", s.Health())
}

// R8: an abandonment during Shutdown must be reported by a return value.
// Since issue 10 Shutdown's budget is its ctx alone (WithDrainTimeout bounds
// only a stop by Run's ctx): a handler still running when the ctx ends is
// abandoned, and Shutdown returns the ctx's error.
func TestRegressionShutdownHidesAbandonment(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 1)
	started := make(chan struct{})
	c, _ := consumer.New(newSource(t, b, "q", 1), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		close(started)
		<-ctx.Done() // cooperative: returns when abandoned
		return ctx.Err()
	}), consumer.WithLogger(quiet), consumer.WithDrainTimeout(time.Hour))
	e := runAsync(c, context.Background())
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	serr := c.Shutdown(ctx)
	rerr := <-e
	t.Logf("Shutdown=%v Run=%v stats=%+v", serr, rerr, b.Stats("q"))
	if !errors.Is(serr, context.DeadlineExceeded) {
		t.Errorf("a handler was abandoned when the Shutdown ctx ended, yet Shutdown=%v (Run=%v); want context.DeadlineExceeded", serr, rerr)
	}
	if st := b.Stats("q"); st.Acked != 0 || st.Ready != 1 {
		t.Errorf("stats %+v; want the abandoned message back in the queue", st)
	}
}

func TestRegressionNilDeliveryCrash(t *testing.T) {
	c, _ := consumer.New(nilSource{}, consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }), consumer.WithLogger(quiet))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Run(ctx); !broker.IsFatal(err) {
		t.Errorf("Run on a source returning (nil, nil) = %v; want a fatal error, not a panic", err)
	}
}

func TestRegressionTypedNilSourceInNew(t *testing.T) {
	var s *memory.Source
	_, err := consumer.New(s, consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }))
	if !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("New(typed nil source) = %v; want ErrInvalidConfig, not a panic", err)
	}
}

type ctxDelivery struct {
	fakeDelivery
	failed *atomic.Int64
}

func (d *ctxDelivery) Ack(ctx context.Context) error {
	time.Sleep(50 * time.Microsecond) // a fast broker round trip
	if err := ctx.Err(); err != nil {
		d.failed.Add(1)
		return err
	}
	return d.rec("ack")
}

type chSource struct{ ch chan broker.Delivery }

func (s *chSource) Receive(ctx context.Context) (broker.Delivery, error) {
	select {
	case d := <-s.ch:
		return d, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
func (s *chSource) Close(context.Context) error { return nil }

// R9: a small but valid settle timeout: the clock ticks at most every 1ms,
// so with a timeout under ~4ms most settlement contexts are already expired.
func TestRegressionTinySettleTimeout(t *testing.T) {
	src := &chSource{ch: make(chan broker.Delivery)}
	_, err := consumer.New(src, consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }),
		consumer.WithSettleTimeout(500*time.Microsecond))
	if !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("New(WithSettleTimeout(500µs)) = %v; want ErrInvalidConfig (contexts would expire mid-settlement)", err)
	}
}

func TestRegressionPanicNilIsDeadLetteredWithText(t *testing.T) {
	b := memory.NewBroker()
	publishN(t, b, "q", 1)
	c, _ := consumer.New(newSource(t, b, "q", 1), consumer.HandlerFunc(func(context.Context, *broker.Message) error {
		panic(nil)
	}), consumer.WithLogger(quiet), consumer.WithMaxDeliveries(2))
	e := runAsync(c, context.Background())
	waitFor(t, "dead-lettered", func() bool { return len(b.DeadLetters("q")) == 1 })
	c.Shutdown(context.Background())
	<-e
	t.Logf("%v", b.DeadLetters("q")[0].Header)
}

// R10: a consumer whose Run failed is left with its source open; if the
// Supervisor then stops (ctx cancelled during the restart delay, a fatal
// failure, or the restart policy giving up) with DrainTimeout 0 (the
// default), nothing ever closes the source.
func TestRegressionSupervisorLeavesFailedConsumersSourceOpen(t *testing.T) {
	for _, tc := range []struct {
		name string
		sup  func() *consumer.Supervisor
		stop func(cancel context.CancelFunc)
	}{
		{"ctx cancelled during restart delay", func() *consumer.Supervisor {
			return &consumer.Supervisor{Logger: quiet, Restart: retry.Constant(time.Hour)}
		}, func(cancel context.CancelFunc) { time.Sleep(50 * time.Millisecond); cancel() }},
		{"restart policy gives up", func() *consumer.Supervisor {
			return &consumer.Supervisor{Logger: quiet, Restart: retry.MaxAttempts(retry.Constant(time.Millisecond), 1)}
		}, func(cancel context.CancelFunc) { time.Sleep(100 * time.Millisecond); cancel() }},
		{"fatal failure", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := memory.NewBroker()
			src, _ := b.Source("q", memory.SourceConfig{Prefetch: 1})
			if tc.sup == nil {
				src.Cancel(broker.Fatal(errors.New("access refused")))
			} else {
				src.Cancel(nil) // Receive fails, not fatal
			}
			c, _ := consumer.New(src, consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }), consumer.WithLogger(quiet))
			s := &consumer.Supervisor{Logger: quiet}
			if tc.sup != nil {
				s = tc.sup()
			}
			s.Add("c", c)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- s.Run(ctx) }()
			if tc.stop != nil {
				tc.stop(cancel)
			}
			err := <-done
			if n := b.Stats("q").Consumers; n != 0 {
				t.Errorf("Supervisor.Run returned (%v); the consumer's source is still open (Consumers=%d, State=%v)", err, n, c.State())
			}
		})
	}
}

// A clean stop reports EventStopped with a nil error, whatever the drain
// timeout. Found by the supervisor example. (Before issue 10 the Supervisor
// had a DrainTimeout of its own; the consumer's is the one budget now.)
func TestRegressionSupervisorCleanStopEventHasNoError(t *testing.T) {
	for _, drain := range []time.Duration{30 * time.Second, time.Second} {
		b := memory.NewBroker()
		c, _ := consumer.New(newSource(t, b, "q", 1), consumer.HandlerFunc(func(context.Context, *broker.Message) error { return nil }),
			consumer.WithLogger(quiet), consumer.WithDrainTimeout(drain))
		stopped := make(chan consumer.Event, 1)
		s := &consumer.Supervisor{Logger: quiet, OnEvent: func(e consumer.Event) {
			if e.Kind == consumer.EventStopped {
				stopped <- e
			}
		}}
		s.Add("c", c)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		waitFor(t, "running", func() bool { return s.Health().Ready })
		cancel()
		if err := <-done; err != nil {
			t.Errorf("DrainTimeout %v: Run = %v; want nil", drain, err)
		}
		if e := <-stopped; e.Err != nil {
			t.Errorf("DrainTimeout %v: EventStopped.Err = %v; want nil for a clean stop", drain, e.Err)
		}
	}
}

// A drain that ran out of time (WithDrainTimeout) is reported in
// EventStopped.Err. Found by review of the fix above. (Issue 10 removed the
// Supervisor's own DrainTimeout, the second case this test had.)
func TestRegressionSupervisorDrainTimeoutIsReportedOnStop(t *testing.T) {
	{
		b := memory.NewBroker()
		publishN(t, b, "q", 1)
		started, release := make(chan struct{}), make(chan struct{})
		c, _ := consumer.New(newSource(t, b, "q", 1), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			close(started)
			<-release // ignores its context: abandoned at the deadline
			return nil
		}), consumer.WithLogger(quiet), consumer.WithDrainTimeout(100*time.Millisecond))
		stopped := make(chan consumer.Event, 1)
		s := &consumer.Supervisor{Logger: quiet, OnEvent: func(e consumer.Event) {
			if e.Kind == consumer.EventStopped {
				stopped <- e
			}
		}}
		s.Add("c", c)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		<-started
		cancel()
		within(t, "Supervisor.Run", 10*time.Second, func() { <-done })
		close(release)
		if e := <-stopped; !errors.Is(e.Err, consumer.ErrDrainTimeout) {
			t.Errorf("EventStopped.Err = %v; want ErrDrainTimeout", e.Err)
		}
	}
}

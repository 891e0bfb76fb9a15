package brokertest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// The capability cases check the optional interfaces of a Source. Each runs
// when the source from Fixture.NewSource implements the interface, and is
// skipped, naming it, when it does not.

// closeBound is how long Close with a context already done may take: it must
// give up what remains at once, so this is generous.
const closeBound = time.Second

// testPause: while a broker.Pauser is paused, Receive hands out nothing; a
// delivery received before Pause can still be settled; after Resume the rest
// arrive, and over the whole run no message is lost or delivered twice.
func testPause(e *env) {
	const n = 6
	e.publish(msgs("pause", n)...)
	src := e.source(n)
	p, ok := src.(broker.Pauser)
	if !ok {
		e.Skipf("source %T does not implement broker.Pauser", src)
	}
	seen := map[string]int{}
	first := e.receive(src, fmt.Sprintf("%d messages were published", n))
	seen[string(first.Message().Body)]++
	ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
	defer cancel()
	if err := p.Pause(ctx); err != nil {
		e.Fatalf("Pause = %v; want nil", err)
	}
	e.nothing(src, "the source is paused: Receive must hand out nothing until Resume")
	e.ack(first) // settling what was received before Pause still works
	e.nothing(src, "the source is still paused after an Ack: Receive must hand out nothing until Resume")
	if err := p.Resume(ctx); err != nil {
		e.Fatalf("Resume = %v; want nil", err)
	}
	for range n - 1 {
		d := e.receive(src, fmt.Sprintf("after Resume, the %d messages not yet received must arrive", n-1))
		seen[string(d.Message().Body)]++
		e.ack(d)
	}
	for i := range n {
		if b := string(msg("pause", i).Body); seen[b] != 1 {
			e.Errorf("across Pause and Resume message %q was received %d times; want once", b, seen[b])
		}
	}
	e.nothing(src, "every message was received and acked across Pause and Resume")
}

// testStatus: a broker.StatusReporter reports Connected once the source is
// consuming (after its first Receive), and not connected, with an Err that
// says why, after Close.
func testStatus(e *env) {
	e.publish(msg("status", 0))
	src := e.source(1)
	sr, ok := src.(broker.StatusReporter)
	if !ok {
		e.Skipf("source %T does not implement broker.StatusReporter", src)
	}
	e.ack(e.receive(src, "a message was published"))
	e.eventually("Status().Connected after the source received a message", func() bool { return sr.Status().Connected },
		func() string { return fmt.Sprintf("%+v", sr.Status()) })
	e.close(src)
	if st := sr.Status(); st.Connected || st.Err == nil {
		e.Errorf("Status after Close = %+v; want Connected false and an Err that says why", st)
	}
}

// eventLog records a source's events, and the calls made after the case
// marked the source closed.
type eventLog struct {
	mu         sync.Mutex
	kinds      []broker.EventKind
	closed     atomic.Bool
	afterClose []broker.EventKind
}

func (l *eventLog) hook(ev broker.Event) {
	late := l.closed.Load()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.kinds = append(l.kinds, ev.Kind)
	if late {
		l.afterClose = append(l.afterClose, ev.Kind)
	}
}

func (l *eventLog) has(k broker.EventKind) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, got := range l.kinds {
		if got == k {
			return true
		}
	}
	return false
}

func (l *eventLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprint(l.kinds)
}

// testEvents: a broker.EventSource calls the hook installed before the first
// Receive with EventConnected once the source has subscribed, and never
// calls it after Close returned.
func testEvents(e *env) {
	src := e.source(1)
	es, ok := src.(broker.EventSource)
	if !ok {
		e.Skipf("source %T does not implement broker.EventSource", src)
	}
	var log eventLog
	es.SetEventHook(log.hook)
	e.publish(msg("events", 0))
	e.ack(e.receive(src, "a message was published"))
	e.eventually("the event hook got EventConnected after the source subscribed", func() bool { return log.has(broker.EventConnected) }, log.String)
	e.close(src)
	log.closed.Store(true)
	e.publish(msg("events", 1))
	time.Sleep(e.h.Quiet) // time for a late call to show
	log.mu.Lock()
	late := log.afterClose
	log.mu.Unlock()
	if len(late) > 0 {
		e.Errorf("the event hook was called with %v after Close returned; want no call after Close", late)
	}
}

// testBacklog: a broker.BacklogReporter reports, eventually, at least the
// messages published and not yet consumed, and 0 once they were all
// consumed and acked; per-partition figures, when given, add up to Messages.
func testBacklog(e *env) {
	const n = 5
	e.publish(msgs("backlog", n)...)
	src := e.source(n)
	br, ok := src.(broker.BacklogReporter)
	if !ok {
		e.Skipf("source %T does not implement broker.BacklogReporter", src)
	}
	var (
		last    broker.Backlog
		lastErr error
	)
	backlog := func() broker.Backlog {
		ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
		defer cancel()
		last, lastErr = br.Backlog(ctx)
		return last
	}
	seen := func() string { return fmt.Sprintf("%+v, error %v", last, lastErr) }
	e.eventually(fmt.Sprintf("Backlog reports at least the %d messages published", n), func() bool {
		return backlog().Messages >= n && lastErr == nil
	}, seen)
	checkPartitions(e, last)
	for range n {
		e.ack(e.receive(src, fmt.Sprintf("%d messages were published", n)))
	}
	e.eventually("Backlog reports 0 messages once every message was consumed and acked", func() bool {
		return backlog().Messages == 0 && lastErr == nil
	}, seen)
	checkPartitions(e, last)
	if last.Consumers == 0 || last.Consumers < -1 {
		e.Errorf("Backlog with a source consuming = %+v; want Consumers >= 1, or -1 when the broker does not say", last)
	}
}

func checkPartitions(e *env, b broker.Backlog) {
	e.Helper()
	if b.Partitions == nil {
		return
	}
	var sum int64
	for _, lag := range b.Partitions {
		sum += lag
	}
	if sum != b.Messages {
		e.Errorf("Backlog = %+v: its partitions add up to %d; want Messages (%d)", b, sum, b.Messages)
	}
}

// testCloseBounded: Close with a context already done returns promptly
// (within a generous second), giving up what remains, and nothing is lost:
// the deliveries that were not settled are delivered again to a new source.
// (An acked message may come again too: a broker that commits offsets, such
// as Kafka, skips the final commit when the budget is gone.)
func testCloseBounded(e *env) {
	const n = 3
	e.publish(msgs("bounded", n)...)
	src := e.source(n)
	var ds []broker.Delivery
	for range n {
		ds = append(ds, e.receive(src, fmt.Sprintf("%d messages were published", n)))
	}
	e.ack(ds[0])
	unsettled := map[string]bool{}
	for _, d := range ds[1:] {
		unsettled[string(d.Message().Body)] = true
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- src.Close(ctx) }()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, context.Canceled) {
			e.Errorf("Close with a cancelled context = %v; want nil or an error wrapping context.Canceled", err)
		}
	case <-time.After(closeBound):
		e.Errorf("Close with a cancelled context had not returned after %v; want it to give up what remains and return", closeBound)
		select {
		case <-done:
			e.Logf("Close with a cancelled context returned after %v", time.Since(start).Round(time.Millisecond))
		case <-time.After(e.h.Timeout):
			e.Fatalf("Close with a cancelled context had not returned after %v", e.h.Timeout)
		}
	}
	rctx, rcancel := context.WithTimeout(context.Background(), e.h.Timeout)
	defer rcancel()
	if _, err := src.Receive(rctx); !errors.Is(err, broker.ErrSourceClosed) {
		e.Errorf("Receive after Close with a cancelled context = %v; want an error wrapping broker.ErrSourceClosed", err)
	}
	src2 := e.source(n)
	for i := 0; len(unsettled) > 0; i++ {
		if i > 2*n {
			e.Fatalf("a new source received %d messages without %d of the ones left unsettled by Close", i, len(unsettled))
		}
		d := e.receive(src2, fmt.Sprintf("%d deliveries were unsettled when Close gave up; they must come back to a new source", len(unsettled)))
		delete(unsettled, string(d.Message().Body))
		e.ack(d)
	}
}

package memory_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/memory"
)

// wait bounds every wait for something that should happen.
const wait = 10 * time.Second

func newSource(t *testing.T, b *memory.Broker, queue string, prefetch int) *memory.Source {
	t.Helper()
	src, err := b.Source(queue, memory.SourceConfig{Prefetch: prefetch})
	if err != nil {
		t.Fatalf("Source(%q, Prefetch %d) = %v", queue, prefetch, err)
	}
	t.Cleanup(func() { src.Close(context.Background()) })
	return src
}

func publish(t *testing.T, b *memory.Broker, queue string, bodies ...string) {
	t.Helper()
	for _, body := range bodies {
		if err := b.Publish(context.Background(), queue, &broker.Message{Body: []byte(body)}); err != nil {
			t.Fatalf("Publish(%q, %q) = %v", queue, body, err)
		}
	}
}

func receive(t *testing.T, src *memory.Source) broker.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	d, err := src.Receive(ctx)
	if err != nil {
		t.Fatalf("Receive() = %v; want a delivery", err)
	}
	return d
}

// blocked reports whether Receive delivers nothing for a short while.
func blocked(t *testing.T, src *memory.Source) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	d, err := src.Receive(ctx)
	if err == nil {
		t.Logf("Receive delivered %q (Attempt %d)", d.Message().Body, d.Message().Attempt)
		return false
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Receive() = %v; want context.DeadlineExceeded", err)
	}
	return true
}

func settle(t *testing.T, name string, f func(context.Context) error) {
	t.Helper()
	if err := f(context.Background()); err != nil {
		t.Fatalf("%s = %v; want nil", name, err)
	}
}

func TestInvalidConfig(t *testing.T) {
	b := memory.NewBroker()
	for _, tc := range []struct {
		queue    string
		prefetch int
	}{{"q", -1}, {"", 1}} {
		if _, err := b.Source(tc.queue, memory.SourceConfig{Prefetch: tc.prefetch}); !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("Source(%q, Prefetch %d) = %v; want an error wrapping ErrInvalidConfig", tc.queue, tc.prefetch, err)
		}
	}
	if err := b.Publish(context.Background(), "", &broker.Message{}); !errors.Is(err, broker.ErrInvalidConfig) {
		t.Errorf("Publish to an empty queue name = %v; want an error wrapping ErrInvalidConfig", err)
	}
}

func TestPublishAssignsIDTopicAndTime(t *testing.T) {
	b := memory.NewBroker()
	publish(t, b, "q", "a", "b")
	if err := b.Publish(context.Background(), "q", &broker.Message{ID: "mine", Body: []byte("c"), Attempt: 7}); err != nil {
		t.Fatal(err)
	}
	src := newSource(t, b, "q", 3)
	for _, want := range []string{"q-1", "q-2", "mine"} {
		m := receive(t, src).Message()
		if m.ID != want || m.Topic != "q" || m.Time.IsZero() || m.Attempt != 1 {
			t.Errorf("received ID %q Topic %q Time %v Attempt %d; want ID %q, Topic q, a publish time, Attempt 1",
				m.ID, m.Topic, m.Time, m.Attempt, want)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Publish(ctx, "q", &broker.Message{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Publish with a cancelled context = %v; want context.Canceled", err)
	}
}

func TestMessagesAreCopied(t *testing.T) {
	b := memory.NewBroker()
	m := broker.Message{Key: []byte("k"), Body: []byte("body"), Header: map[string]string{"h": "v"}}
	if err := b.Publish(context.Background(), "q", &m); err != nil {
		t.Fatal(err)
	}
	// The publisher changes its message after Publish.
	m.Body[0], m.Key[0], m.Header["h"] = 'X', 'X', "X"
	src := newSource(t, b, "q", 1)
	d := receive(t, src)
	got := d.Message()
	if string(got.Body) != "body" || string(got.Key) != "k" || got.Header["h"] != "v" {
		t.Fatalf("received %q/%q/%v; want body, k, v: the publisher's later changes must not reach the broker", got.Body, got.Key, got.Header)
	}
	// The handler changes its copy, then requeues.
	got.Body[0], got.Header["h"] = 'Y', "Y"
	got.Body = append(got.Body, "-appended"...)
	settle(t, "Requeue", d.Requeue)
	again := receive(t, src).Message()
	if string(again.Body) != "body" || again.Header["h"] != "v" {
		t.Fatalf("redelivered %q/%v; want body, v: a handler's changes must not reach the redelivery", again.Body, again.Header)
	}
}

func TestPrefetchBoundsOutstandingDeliveries(t *testing.T) {
	for _, prefetch := range []int{0, 1, 3} {
		t.Run(fmt.Sprintf("prefetch %d", prefetch), func(t *testing.T) {
			b := memory.NewBroker()
			publish(t, b, "q", "1", "2", "3", "4", "5")
			src := newSource(t, b, "q", prefetch)
			want := max(prefetch, 1)
			var ds []broker.Delivery
			for range want {
				ds = append(ds, receive(t, src))
			}
			if !blocked(t, src) {
				t.Fatalf("Receive with %d deliveries outstanding and Prefetch %d delivered; want it to block", want, prefetch)
			}
			if s := b.Stats("q"); s.Unacked != want || s.Ready != 5-want {
				t.Errorf("Stats = %+v; want Unacked %d, Ready %d", s, want, 5-want)
			}
			// A Receive blocked at the bound is woken by a settlement.
			got := make(chan broker.Delivery)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), wait)
				defer cancel()
				d, _ := src.Receive(ctx)
				got <- d
			}()
			time.Sleep(10 * time.Millisecond)
			settle(t, "Ack", ds[0].Ack)
			if d := <-got; d == nil {
				t.Fatalf("a Receive blocked at the prefetch bound did not return after an Ack freed a slot")
			}
		})
	}
}

func TestPrefetchIsPerSource(t *testing.T) {
	b := memory.NewBroker()
	publish(t, b, "q", "1", "2")
	a, c := newSource(t, b, "q", 1), newSource(t, b, "q", 1)
	receive(t, a)
	if m := receive(t, c).Message(); string(m.Body) != "2" {
		t.Errorf("second source received %q; want 2", m.Body)
	}
	if s := b.Stats("q"); s.Consumers != 2 || s.Unacked != 2 {
		t.Errorf("Stats = %+v; want Consumers 2, Unacked 2", s)
	}
}

func TestRequeueRedeliversAtTheHeadWithAttemptPlusOne(t *testing.T) {
	b := memory.NewBroker()
	publish(t, b, "q", "first", "second")
	src := newSource(t, b, "q", 1)
	for attempt := 1; attempt <= 3; attempt++ {
		d := receive(t, src)
		if m := d.Message(); string(m.Body) != "first" || m.Attempt != attempt {
			t.Fatalf("delivery %d = %q Attempt %d; want first, Attempt %d (a requeued message goes back to the head)", attempt, m.Body, m.Attempt, attempt)
		}
		settle(t, "Requeue", d.Requeue)
	}
	if s := b.Stats("q"); s.Requeued != 3 || s.Delivered != 3 || s.Ready != 2 || s.Unacked != 0 {
		t.Errorf("Stats = %+v; want Requeued 3, Delivered 3, Ready 2, Unacked 0", s)
	}
}

func TestSettlingTwiceIsAnError(t *testing.T) {
	b := memory.NewBroker()
	publish(t, b, "q", "m")
	src := newSource(t, b, "q", 1)
	d := receive(t, src)
	settle(t, "Ack", d.Ack)
	for name, f := range map[string]func(context.Context) error{
		"Ack":          d.Ack,
		"Requeue":      d.Requeue,
		"DeadLetter":   func(ctx context.Context) error { return d.DeadLetter(ctx, broker.Reason{}) },
		"RequeueAfter": func(ctx context.Context) error { return d.(broker.DelayedRequeuer).RequeueAfter(ctx, time.Second) },
	} {
		if err := f(context.Background()); !errors.Is(err, broker.ErrAlreadySettled) {
			t.Errorf("%s after Ack = %v; want an error wrapping ErrAlreadySettled", name, err)
		}
	}
	if s := b.Stats("q"); s.Acked != 1 || s.Ready != 0 || s.Unacked != 0 {
		t.Errorf("Stats = %+v; want Acked 1, nothing ready or unacked", s)
	}
}

func TestCloseGivesBackOutstandingDeliveries(t *testing.T) {
	b := memory.NewBroker()
	publish(t, b, "q", "1", "2", "3", "4")
	src := newSource(t, b, "q", 3)
	d1, d2, d3 := receive(t, src), receive(t, src), receive(t, src)
	settle(t, "Ack", d2.Ack)
	settle(t, "Close", func(context.Context) error { return src.Close(context.Background()) })
	if err := d1.Ack(context.Background()); !errors.Is(err, broker.ErrStaleDelivery) {
		t.Errorf("Ack after Close = %v; want ErrStaleDelivery", err)
	}
	if _, err := src.Receive(context.Background()); !errors.Is(err, broker.ErrSourceClosed) {
		t.Errorf("Receive after Close = %v; want ErrSourceClosed", err)
	}
	if err := src.Close(context.Background()); err != nil {
		t.Errorf("second Close = %v; want nil", err)
	}
	_ = d3
	src2 := newSource(t, b, "q", 3)
	// Given back at the head, oldest first, then the one never delivered.
	for _, want := range []struct {
		body    string
		attempt int
	}{{"1", 2}, {"3", 2}, {"4", 1}} {
		m := receive(t, src2).Message()
		if string(m.Body) != want.body || m.Attempt != want.attempt {
			t.Errorf("after Close, a new source received %q Attempt %d; want %q Attempt %d", m.Body, m.Attempt, want.body, want.attempt)
		}
	}
	if s := b.Stats("q"); s.Returned != 2 || s.Acked != 1 {
		t.Errorf("Stats = %+v; want Returned 2, Acked 1", s)
	}
}

func TestReceiveHonoursContextAndClose(t *testing.T) {
	b := memory.NewBroker()
	src := newSource(t, b, "q", 1)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := src.Receive(ctx); errc <- err }()
	time.Sleep(10 * time.Millisecond)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("Receive after cancel = %v; want context.Canceled", err)
	}
	// Receive with an already-done context takes no message, even if one is ready.
	publish(t, b, "q", "m")
	if _, err := src.Receive(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Receive with a done context = %v; want context.Canceled", err)
	}
	if s := b.Stats("q"); s.Ready != 1 || s.Delivered != 0 {
		t.Errorf("Stats = %+v; want the message still ready and never delivered", s)
	}
	// Close wakes a blocked Receive.
	receive(t, src) // hold the only prefetch slot
	go func() { _, err := src.Receive(context.Background()); errc <- err }()
	time.Sleep(10 * time.Millisecond)
	src.Close(context.Background())
	select {
	case err := <-errc:
		if !errors.Is(err, broker.ErrSourceClosed) {
			t.Errorf("blocked Receive after Close = %v; want ErrSourceClosed", err)
		}
	case <-time.After(wait):
		t.Fatal("Close did not wake a blocked Receive")
	}
}

type events struct {
	mu sync.Mutex
	ev []broker.Event
}

func (e *events) hook(ev broker.Event) { e.mu.Lock(); e.ev = append(e.ev, ev); e.mu.Unlock() }
func (e *events) kinds() []broker.EventKind {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []broker.EventKind
	for _, ev := range e.ev {
		out = append(out, ev.Kind)
	}
	return out
}

func TestDropConnectionMakesDeliveriesStale(t *testing.T) {
	b := memory.NewBroker()
	publish(t, b, "q", "1", "2")
	src := newSource(t, b, "q", 2)
	var ev events
	src.SetEventHook(ev.hook)
	d1, d2 := receive(t, src), receive(t, src)
	src.DropConnection()
	for name, f := range map[string]func(context.Context) error{
		"Ack": d1.Ack, "Requeue": d2.Requeue,
		"DeadLetter": func(ctx context.Context) error { return d1.DeadLetter(ctx, broker.Reason{}) },
	} {
		if err := f(context.Background()); !errors.Is(err, broker.ErrStaleDelivery) {
			t.Errorf("%s after DropConnection = %v; want an error wrapping ErrStaleDelivery", name, err)
		}
	}
	if got := fmt.Sprint(ev.kinds()); got != "[connected reconnecting connected]" {
		t.Errorf("events after the first Receive and DropConnection = %s; want [connected reconnecting connected]", got)
	}
	if !src.Status().Connected {
		t.Errorf("Status after DropConnection = %+v; want connected (it reconnects at once)", src.Status())
	}
	for _, want := range []string{"1", "2"} {
		d := receive(t, src)
		if m := d.Message(); string(m.Body) != want || m.Attempt != 2 {
			t.Errorf("after DropConnection the same source received %q Attempt %d; want %q Attempt 2", m.Body, m.Attempt, want)
		}
		settle(t, "Ack", d.Ack)
	}
	if s := b.Stats("q"); s.Acked != 2 || s.Returned != 2 || s.Ready != 0 || s.Unacked != 0 {
		t.Errorf("Stats = %+v; want Acked 2, Returned 2, nothing left", s)
	}
}

func TestCancelFailsReceiveUntilResume(t *testing.T) {
	b := memory.NewBroker()
	publish(t, b, "q", "1")
	src := newSource(t, b, "q", 1)
	var ev events
	src.SetEventHook(ev.hook)
	d := receive(t, src)
	errc := make(chan error, 1)
	go func() { _, err := src.Receive(context.Background()); errc <- err }() // blocked at prefetch
	time.Sleep(10 * time.Millisecond)
	gone := errors.New("queue deleted")
	src.Cancel(gone)
	select {
	case err := <-errc:
		if !errors.Is(err, gone) {
			t.Errorf("blocked Receive after Cancel = %v; want an error wrapping the cancel error", err)
		}
	case <-time.After(wait):
		t.Fatal("Cancel did not wake a blocked Receive")
	}
	if _, err := src.Receive(context.Background()); !errors.Is(err, gone) {
		t.Errorf("Receive after Cancel = %v; want an error wrapping the cancel error", err)
	}
	if err := d.Ack(context.Background()); !errors.Is(err, broker.ErrStaleDelivery) {
		t.Errorf("Ack of a delivery outstanding at Cancel = %v; want ErrStaleDelivery", err)
	}
	if st := src.Status(); st.Connected || !errors.Is(st.Err, gone) {
		t.Errorf("Status after Cancel = %+v; want not connected, Err the cancel error", st)
	}
	src.Resume(context.Background())
	if m := receive(t, src).Message(); string(m.Body) != "1" || m.Attempt != 2 {
		t.Errorf("after Resume received %q Attempt %d; want 1 Attempt 2", m.Body, m.Attempt)
	}
	if got := fmt.Sprint(ev.kinds()); got != "[connected cancelled connected]" {
		t.Errorf("events = %s; want [connected cancelled connected] (first Receive, Cancel, Resume)", got)
	}
}

func TestPauseStopsDeliveriesUntilResume(t *testing.T) {
	b := memory.NewBroker()
	publish(t, b, "q", "1", "2")
	src := newSource(t, b, "q", 2)
	d := receive(t, src)
	src.Pause(context.Background())
	if !blocked(t, src) {
		t.Fatal("Receive on a paused source delivered; want it to block")
	}
	settle(t, "Ack of a delivery taken before Pause", d.Ack)
	src.Resume(context.Background())
	if m := receive(t, src).Message(); string(m.Body) != "2" {
		t.Errorf("after Resume received %q; want 2", m.Body)
	}
}

func TestDeadLetterMovesTheMessageWithTheReason(t *testing.T) {
	b := memory.NewBroker()
	if err := b.Publish(context.Background(), "q", &broker.Message{Body: []byte("bad"), Header: map[string]string{"orig": "yes"}}); err != nil {
		t.Fatal(err)
	}
	src := newSource(t, b, "q", 1)
	d := receive(t, src)
	settle(t, "Requeue", d.Requeue)
	d = receive(t, src)
	at := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	settle(t, "DeadLetter", func(ctx context.Context) error {
		return d.DeadLetter(ctx, broker.Reason{Err: "boom", Attempts: 2, Source: "q", Time: at})
	})
	dead := b.DeadLetters("q")
	if len(dead) != 1 {
		t.Fatalf("DeadLetters = %d messages; want 1", len(dead))
	}
	want := map[string]string{
		"orig": "yes", broker.HeaderError: "boom", broker.HeaderAttempts: "2",
		broker.HeaderSource: "q", broker.HeaderPermanent: "false", broker.HeaderFailedAt: "2024-05-06T07:08:09Z",
	}
	for k, v := range want {
		if dead[0].Header[k] != v {
			t.Errorf("dead letter header %s = %q; want %q", k, dead[0].Header[k], v)
		}
	}
	if string(dead[0].Body) != "bad" || dead[0].Attempt != 2 || dead[0].Topic != memory.DeadLetterQueue("q") {
		t.Errorf("dead letter = %q Attempt %d Topic %q; want bad, Attempt 2 (deliveries it had), Topic q.dlq", dead[0].Body, dead[0].Attempt, dead[0].Topic)
	}
	// The record is a copy.
	dead[0].Header["orig"] = "changed"
	if b.DeadLetters("q")[0].Header["orig"] != "yes" {
		t.Error("changing a message returned by DeadLetters changed the broker's record")
	}
	// The dead-letter queue is a real queue.
	dlq := newSource(t, b, memory.DeadLetterQueue("q"), 1)
	m := receive(t, dlq).Message()
	if string(m.Body) != "bad" || m.Header[broker.HeaderError] != "boom" || m.Attempt != 1 || m.Topic != "q.dlq" {
		t.Errorf("from q.dlq received %q, error header %q, Attempt %d, Topic %q; want bad, boom, 1, q.dlq", m.Body, m.Header[broker.HeaderError], m.Attempt, m.Topic)
	}
	if s := b.Stats("q"); s.DeadLettered != 1 || s.Ready != 0 || s.Unacked != 0 {
		t.Errorf("Stats(q) = %+v; want DeadLettered 1 and nothing left", s)
	}
	if s := b.Stats("q.dlq"); s.Published != 1 || s.Unacked != 1 {
		t.Errorf("Stats(q.dlq) = %+v; want Published 1, Unacked 1", s)
	}
}

func TestRequeueAfterReleasesPrefetchAndRedelivers(t *testing.T) {
	b := memory.NewBroker()
	publish(t, b, "q", "later", "now")
	src := newSource(t, b, "q", 1)
	d := receive(t, src)
	settle(t, "RequeueAfter", func(ctx context.Context) error {
		return d.(broker.DelayedRequeuer).RequeueAfter(ctx, 50*time.Millisecond)
	})
	if s := b.Stats("q"); s.Delayed != 1 || s.Unacked != 0 {
		t.Errorf("Stats during the delay = %+v; want Delayed 1, Unacked 0", s)
	}
	// The delayed message does not hold the prefetch slot.
	d2 := receive(t, src)
	if string(d2.Message().Body) != "now" {
		t.Fatalf("during the delay received %q; want now", d2.Message().Body)
	}
	settle(t, "Ack", d2.Ack)
	d3 := receive(t, src)
	if m := d3.Message(); string(m.Body) != "later" || m.Attempt != 2 {
		t.Errorf("after the delay received %q Attempt %d; want later Attempt 2", m.Body, m.Attempt)
	}
}

func TestBrokerCloseFlushesDelayedMessages(t *testing.T) {
	b := memory.NewBroker()
	publish(t, b, "q", "m")
	src := newSource(t, b, "q", 1)
	d := receive(t, src)
	settle(t, "RequeueAfter", func(ctx context.Context) error {
		return d.(broker.DelayedRequeuer).RequeueAfter(ctx, time.Hour)
	})
	b.Close()
	if s := b.Stats("q"); s.Ready != 1 || s.Delayed != 0 {
		t.Errorf("Stats after Close = %+v; want the delayed message ready, none delayed", s)
	}
	if _, err := src.Receive(context.Background()); !errors.Is(err, broker.ErrSourceClosed) {
		t.Errorf("Receive after Broker.Close = %v; want ErrSourceClosed", err)
	}
	if err := b.Publish(context.Background(), "q", &broker.Message{}); !errors.Is(err, memory.ErrBrokerClosed) {
		t.Errorf("Publish after Close = %v; want ErrBrokerClosed", err)
	}
	if _, err := b.Source("q", memory.SourceConfig{}); !errors.Is(err, memory.ErrBrokerClosed) {
		t.Errorf("Source after Close = %v; want ErrBrokerClosed", err)
	}
}

func TestAckDelayHonoursContext(t *testing.T) {
	b := memory.NewBroker()
	publish(t, b, "q", "m")
	src := newSource(t, b, "q", 1)
	d := receive(t, src)
	b.SetAckDelay(time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := d.Ack(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Ack with a 1h ack delay and a 20ms context = %v; want context.DeadlineExceeded", err)
	}
	if s := b.Stats("q"); s.Unacked != 1 || s.Acked != 0 {
		t.Fatalf("Stats after a timed-out Ack = %+v; want the message still unacked", s)
	}
	b.SetAckDelay(time.Millisecond)
	settle(t, "Ack with a 1ms delay", d.Ack)
	if s := b.Stats("q"); s.Acked != 1 {
		t.Errorf("Stats = %+v; want Acked 1", s)
	}
}

func TestHookIsNotCalledAfterClose(t *testing.T) {
	b := memory.NewBroker()
	src := newSource(t, b, "q", 1)
	var ev events
	src.SetEventHook(ev.hook)
	src.Close(context.Background())
	src.DropConnection()
	src.Cancel(nil)
	if k := ev.kinds(); len(k) != 0 {
		t.Errorf("events after Close = %v; want none", k)
	}
}

// TestConcurrentProducersAndConsumers runs publishers, competing sources
// and concurrent receivers that ack, requeue and dead-letter at random, and
// checks that every message ends acked or dead-lettered exactly once. Run it
// with -race.
func TestConcurrentProducersAndConsumers(t *testing.T) {
	const publishers, perPublisher, sources, receivers = 4, 250, 3, 4
	const total = publishers * perPublisher
	b := memory.NewBroker()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	var (
		mu    sync.Mutex
		acked = map[string]int{}
		done  = make(chan struct{})
		wg    sync.WaitGroup
	)
	finish := func() {
		mu.Lock()
		defer mu.Unlock()
		if len(acked)+len(b.DeadLetters("q")) == total {
			select {
			case <-done:
			default:
				close(done)
			}
		}
	}
	for p := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perPublisher {
				if err := b.Publish(ctx, "q", &broker.Message{Body: []byte(fmt.Sprintf("%d-%d", p, i))}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	rctx, stop := context.WithCancel(ctx)
	for s := range sources {
		src := newSource(t, b, "q", 4)
		for r := range receivers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := 0; ; n++ {
					d, err := src.Receive(rctx)
					if err != nil {
						return
					}
					m := d.Message()
					var serr error
					switch i, _ := strconv.Atoi(string(m.Body[len(m.Body)-1:])); {
					case i == 7 && m.Attempt < 3: // some messages fail twice
						serr = d.Requeue(ctx)
					case i == 9: // some are poison
						serr = d.DeadLetter(ctx, broker.Reason{Err: "poison", Attempts: m.Attempt})
					default:
						serr = d.Ack(ctx)
						mu.Lock()
						acked[string(m.Body)]++
						mu.Unlock()
					}
					if serr != nil {
						t.Errorf("source %d receiver %d: settle %q: %v", s, r, m.Body, serr)
					}
					finish()
				}
			}()
		}
	}
	select {
	case <-done:
	case <-ctx.Done():
		t.Errorf("timed out: %d acked, %d dead-lettered of %d", len(acked), len(b.DeadLetters("q")), total)
	}
	stop()
	wg.Wait()
	for k, n := range acked {
		if n != 1 {
			t.Errorf("%q acked %d times; want once", k, n)
		}
	}
	st := b.Stats("q")
	if st.Acked+st.DeadLettered != total || st.Published != total || st.Ready != 0 || st.Unacked != 0 {
		t.Errorf("Stats = %+v; want Published %d = Acked + DeadLettered, nothing left", st, total)
	}
	if want := total / 10; st.DeadLettered != want || st.Requeued != 2*want {
		t.Errorf("Stats = %+v; want DeadLettered %d (bodies ending in 9) and Requeued %d (bodies ending in 7, twice)", st, want, 2*want)
	}
}

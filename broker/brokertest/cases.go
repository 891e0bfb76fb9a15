package brokertest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// cases is the suite, in the order it runs: the core contract first, then
// settlement, faults, concurrency, and the runtime end to end.
var cases = []testCase{
	{name: "Receive returns what was published", run: testRoundTrip},
	{name: "Receive returns the context's error when the context is cancelled, and loses no message", run: testReceiveCancel},
	{name: "a blocked Receive returns a message published after it started", run: testReceiveWakes},
	{name: "after Close, Receive returns ErrSourceClosed and Close is idempotent", run: testClosed},
	{name: "an acked message is not delivered again", run: testAck},
	{name: "a requeued message is delivered again", run: testRequeue},
	{name: "a requeued message is delivered again with Attempt 2", needs: []need{needDeliveryCount}, run: testRequeueAttempt},
	{name: "Close gives unsettled deliveries back to a new source", run: testCloseGivesBack},
	{name: "DeadLetter moves the message to the dead-letter destination with the reason in its headers", run: testDeadLetter},
	{name: "settling a delivery twice returns ErrAlreadySettled", run: testSettleTwice},
	{name: "a stale delivery cannot be settled and its message is redelivered", needs: []need{needStale}, run: testStale},
	{name: "Receive blocks while prefetch deliveries are unsettled", needs: []need{needPrefetch}, run: testPrefetch},
	{name: "RequeueAfter delivers the message again after the delay", needs: []need{needDelayed}, run: testRequeueAfter},
	{name: "concurrent Receive from 8 goroutines loses and duplicates nothing", run: testConcurrentReceive},
	{name: "ReceiveBatch returns 1 to max deliveries, each once, settled in any order, and a lane released out of order comes again in order", run: testBatchReceive},
	{name: "Close with a cancelled context returns at once and unsettled deliveries come back to a new source", run: testCloseBounded},
	{name: "Publish sends a batch in order with its key, headers, ID and JSON content type", run: testPublishBatch},
	{name: "Publish after Close returns ErrPublisherClosed", run: testPublishClosed},
	{name: "Publish honours its context's cancellation and deadline", run: testPublishContext},
	{name: "Publish to an unknown destination returns an error", needs: []need{needUnknownDestination}, run: testPublishUnknown},
	{name: "a paused source hands out nothing until Resume, and loses and duplicates nothing", run: testPause},
	{name: "Status is connected after the first Receive and not after Close", run: testStatus},
	{name: "the event hook gets EventConnected and is not called after Close", run: testEvents},
	{name: "Backlog counts what was published until it is consumed", run: testBacklog},
	{name: "dead letters: List shows each with its reason and changes neither their count nor their order", run: testDeadLetterList},
	{name: "dead letters: List pages cover every dead letter exactly once", run: testDeadLetterPaging},
	{name: "dead letters: List and Count filter by reason text, source and ids", run: testDeadLetterFilter},
	{name: "dead letters: Redrive sends a dead letter back with Attempt 1 and counts its redrives", run: testDeadLetterRedrive},
	{name: "dead letters: Redrive skips a dead letter at the redrive limit and it stays", run: testDeadLetterLimit},
	{name: "dead letters: Redrive skips a dead letter whose source does not exist and loses nothing", run: testDeadLetterNoSource},
	{name: "dead letters: Redrive does not send a dead letter to a source its headers name", run: testDeadLetterForeignSource},
	{name: "dead letters: Redrive refuses a Destination that does not exist", run: testDeadLetterMissingDestination},
	{name: "dead letters: Redrive refuses the dead-letter destination itself as Destination", run: testDeadLetterSelfDestination},
	{name: "dead letters: DryRun changes nothing", run: testDeadLetterDryRun},
	{name: "dead letters: Purge deletes exactly the selected dead letters", run: testDeadLetterPurge},
	{name: "dead letters: unknown ids are reported missing and change nothing", run: testDeadLetterUnknown},
	{name: "dead letters: an empty selection is refused with ErrEmptySelection", run: testDeadLetterEmptySelection},
	{name: "the consumer runtime handles every published message once", run: testRuntimeHandlesAll},
	{name: "the consumer runtime dead-letters a failing message after the delivery budget", needs: []need{needDeliveryCount}, run: testRuntimeDeadLetters},
	{name: "cancelling the consumer runtime's context loses no message", run: testRuntimeCancel},
}

func testRoundTrip(e *env) {
	const n = 3
	e.publish(msgs("round-trip", n)...)
	src := e.source(n)
	seen := map[string]bool{}
	for range n {
		d := e.receive(src, fmt.Sprintf("%d messages were published", n))
		m := d.Message()
		if d.Message() != m {
			e.Errorf("Delivery.Message() returned different pointers; it must return the same one every time")
		}
		i, err := strconv.Atoi(m.Header["x-test-index"])
		if err != nil {
			e.Fatalf("received %s with headers %v; want the published header x-test-index to round-trip", describe(m), m.Header)
		}
		want := msg("round-trip", i)
		switch {
		case string(m.Body) != string(want.Body):
			e.Errorf("received body %q with x-test-index %d; want %q (body and headers must round-trip)", m.Body, i, want.Body)
		case string(m.Key) != string(want.Key):
			e.Errorf("received %s with Key %q; want %q (the key must round-trip)", describe(m), m.Key, want.Key)
		case m.Attempt != 1:
			e.Errorf("received %s on its first delivery; want Attempt 1", describe(m))
		case m.ID == "":
			e.Errorf("received %s with an empty ID; want the adapter to identify every message", describe(m))
		case e.f.Destination != "" && m.Topic != e.f.Destination:
			e.Errorf("received %s with Topic %q; want the destination %q", describe(m), m.Topic, e.f.Destination)
		}
		if seen[string(m.Body)] {
			e.Errorf("received %s twice; want each published message once", describe(m))
		}
		seen[string(m.Body)] = true
		e.ack(d)
	}
}

func testReceiveCancel(e *env) {
	src := e.source(1)
	for _, tc := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{"cancelled", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(50*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
		{"past its deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 50*time.Millisecond)
		}, context.DeadlineExceeded},
	} {
		ctx, cancel := tc.ctx()
		type result struct {
			d   broker.Delivery
			err error
		}
		done := make(chan result, 1)
		go func() {
			d, err := src.Receive(ctx)
			done <- result{d, err}
		}()
		select {
		case r := <-done:
			if r.err == nil {
				e.Fatalf("Receive on an empty destination with a context %s delivered %s; want an error", tc.name, describe(r.d.Message()))
			}
			if !errors.Is(r.err, tc.want) {
				e.Errorf("Receive with a context %s = %v; want an error wrapping %v", tc.name, r.err, tc.want)
			}
		case <-time.After(e.h.Timeout):
			cancel()
			e.Fatalf("Receive with a context %s did not return within %v; it must return when its context ends", tc.name, e.h.Timeout)
		}
		cancel()
	}
	e.publish(msg("after-cancel", 0))
	d := e.receive(src, "a message was published after two cancelled Receive calls (a cancelled Receive must not swallow it)")
	if got := string(d.Message().Body); got != "after-cancel-0" {
		e.Errorf("received %q after cancelled Receive calls; want %q", got, "after-cancel-0")
	}
	e.ack(d)
}

func testReceiveWakes(e *env) {
	src := e.source(1)
	got := make(chan broker.Delivery, 1)
	errc := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
	defer cancel()
	go func() {
		d, err := src.Receive(ctx)
		if err != nil {
			errc <- err
			return
		}
		got <- d
	}()
	time.Sleep(50 * time.Millisecond) // let Receive block on the empty destination
	e.publish(msg("wake", 0))
	select {
	case d := <-got:
		if b := string(d.Message().Body); b != "wake-0" {
			e.Errorf("a blocked Receive returned %s; want the message published while it waited", describe(d.Message()))
		}
		e.ack(d)
	case err := <-errc:
		e.Fatalf("a Receive blocked on an empty destination returned %v after a message was published; want the message", err)
	}
}

func testClosed(e *env) {
	src := e.source(1)
	e.close(src)
	if err := src.Close(context.Background()); err != nil {
		e.Errorf("a second Close = %v; want nil (Close is idempotent)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
	defer cancel()
	d, err := src.Receive(ctx)
	switch {
	case err == nil:
		e.Errorf("Receive after Close delivered %s; want broker.ErrSourceClosed", describe(d.Message()))
	case !errors.Is(err, broker.ErrSourceClosed):
		e.Errorf("Receive after Close = %v; want an error wrapping broker.ErrSourceClosed", err)
	}
}

func testAck(e *env) {
	e.publish(msg("acked", 0))
	src := e.source(1)
	d := e.receive(src, "a message was published")
	e.ack(d)
	e.close(src)
	e.publish(msg("marker", 1))
	src2 := e.source(1)
	d = e.receive(src2, "a marker was published after the acked message")
	if got := string(d.Message().Body); got != "marker-1" {
		e.Fatalf("after Ack and Close, a new source received %s; want only the marker %q: an acked message must not be redelivered", describe(d.Message()), "marker-1")
	}
	e.ack(d)
	e.nothing(src2, "after Ack the message must not be delivered again")
}

func testRequeue(e *env) {
	e.publish(msg("requeued", 0))
	src := e.source(1)
	d := e.receive(src, "a message was published")
	e.requeue(d)
	d2 := e.receive(src, "after Requeue the message must be delivered again")
	if got := string(d2.Message().Body); got != "requeued-0" {
		e.Fatalf("after Requeue, received %s; want the requeued message %q", describe(d2.Message()), "requeued-0")
	}
	e.ack(d2)
	e.nothing(src, "after the redelivery was acked the message must not be delivered again")
}

func testRequeueAttempt(e *env) {
	e.publish(msg("attempt", 0))
	src := e.source(1)
	for want := 1; want <= 3; want++ {
		d := e.receive(src, fmt.Sprintf("delivery %d of a requeued message", want))
		if got := d.Message().Attempt; got != want {
			e.Fatalf("delivery %d of a message requeued %d times has Attempt %d; want %d (Attempt counts deliveries)", want, want-1, got, want)
		}
		if want < 3 {
			e.requeue(d)
		} else {
			e.ack(d)
		}
	}
}

func testCloseGivesBack(e *env) {
	const n = 3
	e.publish(msgs("give-back", n)...)
	src := e.source(n)
	var ds []broker.Delivery
	for range n {
		ds = append(ds, e.receive(src, fmt.Sprintf("%d messages were published", n)))
	}
	acked := string(ds[0].Message().Body)
	e.ack(ds[0])
	e.close(src)
	src2 := e.source(n)
	got := map[string]bool{}
	for range n - 1 {
		d := e.receive(src2, fmt.Sprintf("%d deliveries were unsettled when their source closed; they must come back to a new source", n-1))
		m := d.Message()
		if string(m.Body) == acked {
			e.Fatalf("a new source received %s, which was acked before Close; want only the unsettled ones", describe(m))
		}
		if got[string(m.Body)] {
			e.Fatalf("a new source received %s twice; want each unsettled message once", describe(m))
		}
		got[string(m.Body)] = true
		if e.h.Capabilities.DurableDeliveryCount && m.Attempt != 2 {
			e.Errorf("a message given back by Close was redelivered with Attempt %d; want 2 (Capabilities.DurableDeliveryCount)", m.Attempt)
		}
		e.ack(d)
	}
	e.nothing(src2, "each message given back by Close must be delivered once")
}

func testDeadLetter(e *env) {
	m := msg("dead", 0)
	m.Header["x-test-original"] = "kept"
	e.publish(m)
	src := e.source(1)
	d := e.receive(src, "a message was published")
	reason := broker.Reason{
		Err:       "brokertest: cannot handle",
		Attempts:  1,
		Source:    d.Message().Topic,
		Permanent: true,
		Time:      time.Now(),
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
	err := d.DeadLetter(ctx, reason)
	cancel()
	if err != nil {
		e.Fatalf("DeadLetter(%s) = %v; want nil", describe(d.Message()), err)
	}
	dead := e.f.DeadLetters(e.ctx(), e.T, 1)
	if len(dead) != 1 {
		e.Fatalf("after one DeadLetter, DeadLetters found %d messages within %v; want 1", len(dead), e.h.Timeout)
	}
	dm := dead[0]
	if string(dm.Body) != "dead-0" {
		e.Errorf("dead letter body = %q; want the original body %q", dm.Body, "dead-0")
	}
	for k, want := range map[string]string{
		broker.HeaderError:     reason.Err,
		broker.HeaderAttempts:  "1",
		broker.HeaderPermanent: "true",
		"x-test-original":      "kept",
	} {
		if got := dm.Header[k]; got != want {
			e.Errorf("dead letter header %s = %q; want %q (a dead letter carries the reason and keeps its headers)", k, got, want)
		}
	}
	if got := dm.Header[broker.HeaderSource]; got == "" || (e.f.Destination != "" && got != e.f.Destination) {
		e.Errorf("dead letter header %s = %q; want the source destination %q", broker.HeaderSource, got, e.f.Destination)
	}
	e.close(src)
	e.publish(msg("marker", 1))
	src2 := e.source(1)
	d = e.receive(src2, "a marker was published after the dead-lettered message")
	if got := string(d.Message().Body); got != "marker-1" {
		e.Fatalf("after DeadLetter, a new source received %s; want only the marker: a dead-lettered message must leave the destination", describe(d.Message()))
	}
	e.ack(d)
}

// settleOnce calls f, turning a panic into a test failure.
func settleOnce(e *env, what string, f func(ctx context.Context) error) (err error) {
	e.Helper()
	defer func() {
		if p := recover(); p != nil {
			e.Fatalf("%s panicked: %v; settling twice must return an error, not panic", what, p)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
	defer cancel()
	return f(ctx)
}

func testSettleTwice(e *env) {
	e.publish(msgs("twice", 2)...)
	src := e.source(2)
	d1 := e.receive(src, "2 messages were published")
	d2 := e.receive(src, "2 messages were published")
	e.ack(d1)
	if err := settleOnce(e, "a second Ack", d1.Ack); !errors.Is(err, broker.ErrAlreadySettled) {
		e.Errorf("Ack after Ack = %v; want an error wrapping broker.ErrAlreadySettled", err)
	}
	if err := settleOnce(e, "Requeue after Ack", d1.Requeue); !errors.Is(err, broker.ErrAlreadySettled) {
		e.Errorf("Requeue after Ack = %v; want an error wrapping broker.ErrAlreadySettled", err)
	}
	e.requeue(d2)
	if err := settleOnce(e, "Ack after Requeue", d2.Ack); !errors.Is(err, broker.ErrAlreadySettled) {
		e.Errorf("Ack after Requeue = %v; want an error wrapping broker.ErrAlreadySettled", err)
	}
	dl := func(ctx context.Context) error { return d2.DeadLetter(ctx, broker.Reason{Err: "twice"}) }
	if err := settleOnce(e, "DeadLetter after Requeue", dl); !errors.Is(err, broker.ErrAlreadySettled) {
		e.Errorf("DeadLetter after Requeue = %v; want an error wrapping broker.ErrAlreadySettled", err)
	}
	d3 := e.receive(src, "a requeued message must be delivered again, even after a failed second settlement")
	if got := string(d3.Message().Body); got != string(d2.Message().Body) {
		e.Errorf("after Requeue and a rejected Ack, received %s; want the requeued %q", describe(d3.Message()), d2.Message().Body)
	}
	e.ack(d3)
}

func testStale(e *env) {
	e.publish(msg("stale", 0))
	src := e.source(1)
	d := e.receive(src, "a message was published")
	e.f.MakeStale(e.T, src)
	ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
	err := d.Ack(ctx)
	cancel()
	if !errors.Is(err, broker.ErrStaleDelivery) {
		e.Fatalf("Ack of a delivery made stale = %v; want an error wrapping broker.ErrStaleDelivery", err)
	}
	d2 := e.receive(src, "the message of a stale delivery must be redelivered once the source recovered")
	m := d2.Message()
	if string(m.Body) != "stale-0" {
		e.Fatalf("after the delivery went stale, received %s; want %q again", describe(m), "stale-0")
	}
	if e.h.Capabilities.DurableDeliveryCount && m.Attempt != 2 {
		e.Errorf("the redelivery of a stale delivery has Attempt %d; want 2 (Capabilities.DurableDeliveryCount)", m.Attempt)
	}
	e.ack(d2)
	e.nothing(src, "the message of a stale delivery must be redelivered once, not twice")
}

func testPrefetch(e *env) {
	const prefetch = 2
	e.publish(msgs("prefetch", prefetch+1)...)
	src := e.source(prefetch)
	var ds []broker.Delivery
	for range prefetch {
		ds = append(ds, e.receive(src, fmt.Sprintf("%d messages were published", prefetch+1)))
	}
	e.nothing(src, fmt.Sprintf("with prefetch %d and %d deliveries unsettled, Receive must block", prefetch, prefetch))
	e.ack(ds[0])
	d := e.receive(src, "after an Ack freed one prefetch slot, Receive must deliver the third message")
	e.ack(d)
	e.ack(ds[1])
}

func testRequeueAfter(e *env) {
	e.publish(msg("delayed", 0))
	src := e.source(1)
	d := e.receive(src, "a message was published")
	dr, ok := d.(broker.DelayedRequeuer)
	if !ok {
		e.Fatalf("delivery %T does not implement broker.DelayedRequeuer; Capabilities.DelayedRequeue says it does", d)
	}
	const delay = 100 * time.Millisecond
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
	err := dr.RequeueAfter(ctx, delay)
	cancel()
	if err != nil {
		e.Fatalf("RequeueAfter(%v) = %v; want nil", delay, err)
	}
	d2 := e.receive(src, "after RequeueAfter the message must be delivered again")
	if el := time.Since(start); el < delay*9/10 {
		e.Errorf("RequeueAfter(%v): the message was delivered again after %v; want no sooner than the delay", delay, el)
	}
	m := d2.Message()
	if string(m.Body) != "delayed-0" {
		e.Fatalf("after RequeueAfter received %s; want %q", describe(m), "delayed-0")
	}
	if e.h.Capabilities.DeliveryCount && m.Attempt != 2 {
		e.Errorf("after RequeueAfter the message has Attempt %d; want 2 (Capabilities.DeliveryCount)", m.Attempt)
	}
	e.ack(d2)
}

func testConcurrentReceive(e *env) {
	const n, workers = 500, 8
	e.publish(msgs("concurrent", n)...)
	src := e.source(2 * workers)
	ctx, cancel := context.WithCancel(e.ctx())
	defer cancel()
	var (
		mu    sync.Mutex
		seen  = make(map[string]int, n)
		total int
		errs  []error
		wg    sync.WaitGroup
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				d, err := src.Receive(ctx)
				if err != nil {
					if ctx.Err() == nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
						cancel()
					}
					return
				}
				actx, acancel := context.WithTimeout(context.Background(), e.h.Timeout)
				err = d.Ack(actx)
				acancel()
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("Ack(%s) = %w", describe(d.Message()), err))
					mu.Unlock()
				}
				mu.Lock()
				seen[string(d.Message().Body)]++
				total++
				if total == n {
					cancel()
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		e.Errorf("concurrent Receive/Ack: %v", err)
	}
	var missing, dup []string
	for i := range n {
		b := string(msg("concurrent", i).Body)
		switch seen[b] {
		case 0:
			missing = append(missing, b)
		case 1:
		default:
			dup = append(dup, b)
		}
	}
	if len(missing) > 0 || len(dup) > 0 || total != n {
		e.Fatalf("%d workers receiving %d messages concurrently got %d deliveries, %d messages missing (e.g. %v), %d duplicated (e.g. %v); want each message exactly once",
			workers, n, total, len(missing), head(missing), len(dup), head(dup))
	}
}

func head(s []string) []string { return s[:min(len(s), 5)] }

package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
)

// coalescingSource returns a connected Source on a new queue of type typ
// holding n messages with ids "0".."n-1", with prefetch 64 and the given
// coalescing settings.
func coalescingSource(t *testing.T, typ string, n, batch int, delay time.Duration) (*Source, string) {
	t.Helper()
	q := uniqueQueue(t)
	cfg := testConfig(q)
	cfg.Prefetch = 64
	cfg.AckBatch, cfg.AckDelay = batch, delay
	cfg.Topology.QueueType = typ
	cfg.Logger = quietLogger()
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close(context.Background()) })
	// Connect (which declares the topology), then fill the queue.
	short, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if d, err := src.Receive(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Receive on an empty queue = %v, %v; want DeadlineExceeded", d, err)
	}
	waitFor(t, 10*time.Second, "connected", func() bool { return src.Status().Connected })
	prepublish(t, q, n, 16)
	return src, q
}

func receiveN(ctx context.Context, t *testing.T, src *Source, n int) []broker.Delivery {
	t.Helper()
	var ds []broker.Delivery
	for len(ds) < n {
		d, err := src.Receive(ctx)
		if err != nil {
			t.Fatalf("Receive after %d deliveries: %v", len(ds), err)
		}
		ds = append(ds, d)
	}
	return ds
}

func msgIDs(ms []broker.Message) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.ID)
	}
	sort.Strings(out)
	return out
}

// TestCoalescedAcksNeverCoverAnUnsettledDelivery receives 40 deliveries on
// one channel and acks all but two in the middle (ids 5 and 20), so that
// multiple acks go out around them. Then:
//
//   - abandoned: the source closes with the two unsettled. Its close
//     flushes the waiting acks; the broker must requeue exactly the two: a
//     multiple ack that covered one would have lost it.
//   - settled late: one is requeued, the other dead-lettered. The first
//     comes back as attempt 2, the second is in the dead-letter queue, and
//     nothing else is left.
func TestCoalescedAcksNeverCoverAnUnsettledDelivery(t *testing.T) {
	needBroker(t)
	for _, typ := range []string{Classic, Quorum} {
		t.Run(typ+"/abandoned", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			src, q := coalescingSource(t, typ, 40, 16, time.Millisecond)
			tagErrorsBefore, logReadable := brokerLogCount("unknown delivery tag", testBroker.vhost)
			for _, d := range receiveN(ctx, t, src, 40) {
				if id := d.Message().ID; id == "5" || id == "20" {
					continue
				}
				if err := d.Ack(ctx); err != nil {
					t.Fatalf("Ack(%s) = %v", d.Message().ID, err)
				}
			}
			time.Sleep(50 * time.Millisecond) // the ticks send what waits behind 5 and 20
			st := &src.ackStats
			t.Logf("%s: 38 acks sent as %d multiple and %d single acks", typ, st.multiples.Load(), st.singles.Load())
			if st.multiples.Load() == 0 {
				t.Errorf("no multiple ack was sent; the test proves nothing")
			}
			if err := src.Close(ctx); err != nil {
				t.Fatalf("Close = %v", err)
			}
			short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
			defer cancelShort()
			back := readQueue(short, t, q, 3) // 3: to see a third if there is one
			if got := msgIDs(back); !slices.Equal(got, []string{"20", "5"}) {
				t.Errorf("after Close the queue holds %v; want exactly the unsettled [20 5]", got)
			}
			if logReadable {
				if after, _ := brokerLogCount("unknown delivery tag", testBroker.vhost); after != tagErrorsBefore {
					t.Errorf("the broker logged %d \"unknown delivery tag\" errors; want 0", after-tagErrorsBefore)
				}
			}
		})
		t.Run(typ+"/settled late", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			src, q := coalescingSource(t, typ, 40, 16, time.Millisecond)
			var held []broker.Delivery
			for _, d := range receiveN(ctx, t, src, 40) {
				if id := d.Message().ID; id == "5" || id == "20" {
					held = append(held, d)
					continue
				}
				if err := d.Ack(ctx); err != nil {
					t.Fatalf("Ack(%s) = %v", d.Message().ID, err)
				}
			}
			time.Sleep(50 * time.Millisecond)
			if err := held[0].Requeue(ctx); err != nil {
				t.Fatalf("Requeue(5) = %v", err)
			}
			if err := held[1].DeadLetter(ctx, broker.Reason{Err: "boom", Attempts: 1, Source: q}); err != nil {
				t.Fatalf("DeadLetter(20) = %v", err)
			}
			again := receiveN(ctx, t, src, 1)[0]
			if m := again.Message(); m.ID != "5" || m.Attempt != 2 {
				t.Errorf("redelivered %q attempt %d; want \"5\" attempt 2", m.ID, m.Attempt)
			}
			if err := again.Ack(ctx); err != nil {
				t.Fatal(err)
			}
			if err := src.Close(ctx); err != nil {
				t.Fatalf("Close = %v", err)
			}
			short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
			defer cancelShort()
			if got := msgIDs(readQueue(short, t, q+".dlq", 2)); !slices.Equal(got, []string{"20"}) {
				t.Errorf("dead letters %v; want [20]", got)
			}
			if got := readQueue(short, t, q, 1); len(got) != 0 {
				t.Errorf("queue holds %v after everything was settled; want nothing", msgIDs(got))
			}
		})
	}
}

// TestPauseAndCloseFlushWaitingAcks acks 5 deliveries with a batch of 16
// and a delay of a second (the most allowed), so that only a flush sends
// them at once: Pause must (no more deliveries come while paused, and the source may sit idle for long),
// and so must Close, or the broker would deliver them again. The queue holds
// just the 5, so that Pause has nothing buffered to give back (a give-back
// nack sends the acks before it too).
func TestPauseAndCloseFlushWaitingAcks(t *testing.T) {
	needBroker(t)
	for _, how := range []string{"pause", "close"} {
		t.Run(how, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			src, q := coalescingSource(t, Classic, 5, 16, maxAckDelay)
			for _, d := range receiveN(ctx, t, src, 5) {
				if err := d.Ack(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if n := src.ackStats.acked.Load(); n != 0 {
				t.Fatalf("%d acks sent before the flush; want 0 (batch 16, delay 1s)", n)
			}
			switch how {
			case "pause":
				if err := src.Pause(ctx); err != nil {
					t.Fatalf("Pause = %v", err)
				}
			case "close":
				if err := src.Close(ctx); err != nil {
					t.Fatalf("Close = %v", err)
				}
			}
			if n := src.ackStats.acked.Load(); n != 5 {
				t.Errorf("after %s: %d acks sent; want 5", how, n)
			}
			if err := src.Close(ctx); err != nil {
				t.Fatalf("Close = %v", err)
			}
			ch, err := rawConn(t).Channel()
			if err != nil {
				t.Fatal(err)
			}
			defer ch.Close()
			if qi, err := ch.QueueDeclarePassive(q, true, false, false, false, nil); err != nil || qi.Messages != 0 {
				t.Errorf("queue after Close: %+v, %v; want no message", qi, err)
			}
		})
	}
}

// TestCoalescedAcksKeepTheQuorumDeliveryCount runs the consumer runtime on
// a quorum queue with coalescing on (AckBatch 16), prefetch 64 and 8 workers, over 600
// messages: every 10th fails twice then succeeds, every 50th always fails
// (budget 3), the others succeed at once. Each message's attempts must come
// as 1, 2, 3… with no gap or repeat (x-delivery-count, which a nack raises
// and an ack must not), the failing ones must reach the dead-letter queue
// with attempts 3, and every other message must be handled to success
// exactly once.
func TestCoalescedAcksKeepTheQuorumDeliveryCount(t *testing.T) {
	needBroker(t)
	const n = 600
	src, q := coalescingSource(t, Quorum, n, 16, 0)
	var mu sync.Mutex
	attempts := map[string][]int{}
	succeeded := map[string]int{}
	c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		i, _ := strconv.Atoi(m.ID)
		mu.Lock()
		attempts[m.ID] = append(attempts[m.ID], m.Attempt)
		mu.Unlock()
		switch {
		case i%50 == 0:
			return errors.New("always fails")
		case i%10 == 0 && m.Attempt < 3:
			return fmt.Errorf("fails on attempt %d", m.Attempt)
		}
		mu.Lock()
		succeeded[m.ID]++
		mu.Unlock()
		return nil
	}), consumer.WithConcurrency(8), consumer.WithMaxDeliveries(3), consumer.WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	_, cancel, done := runInBackground(t, c, nil)
	defer cancel()
	ctx, cancelRead := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancelRead()
	dead := readQueue(ctx, t, q+".dlq", n/50)
	waitFor(t, 30*time.Second, "every good message handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(succeeded) == n-n/50
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	for id, as := range attempts {
		i, _ := strconv.Atoi(id)
		want := []int{1}
		if i%10 == 0 {
			want = []int{1, 2, 3}
		}
		if !slices.Equal(as, want) {
			t.Errorf("message %s: attempts %v; want %v", id, as, want)
		}
		if i%50 != 0 && succeeded[id] != 1 {
			t.Errorf("message %s succeeded %d times; want 1", id, succeeded[id])
		}
	}
	if len(dead) != n/50 {
		t.Errorf("dead letters %d; want %d", len(dead), n/50)
	}
	for _, m := range dead {
		if m.Header[broker.HeaderAttempts] != "3" {
			t.Errorf("dead letter %s: attempts header %q; want 3", m.ID, m.Header[broker.HeaderAttempts])
		}
	}
	st := &src.ackStats
	t.Logf("quorum, %d messages: %d acks as %d multiple + %d single acks; %d dead letters", n,
		st.acked.Load(), st.multiples.Load(), st.singles.Load(), len(dead))
}

// TestAWaitingWorkerGetsTheCreditOfWaitingAcks (issue 15): with the prefetch
// equal to the concurrency, an ack that waits for its batch or its delay
// holds the credit a worker waits for. Prefetch 8 (AckBatch 16, capped to
// 2), AckDelay 1 second (the most allowed): 8 deliveries are taken, one is acked (less than a
// batch) and 7 are held by busy handlers. The broker can send nothing more
// until the ack goes out: it must go at once rather than after the delay,
// and the next Receive get the 9th delivery.
func TestAWaitingWorkerGetsTheCreditOfWaitingAcks(t *testing.T) {
	needBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	q := uniqueQueue(t)
	cfg := testConfig(q)
	cfg.Prefetch = 8
	cfg.AckBatch, cfg.AckDelay = 16, maxAckDelay
	cfg.Logger = quietLogger()
	src, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = src.Close(context.Background()) }()
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	if d, err := src.Receive(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Receive on an empty queue = %v, %v; want DeadlineExceeded", d, err)
	}
	cancelShort()
	waitFor(t, 10*time.Second, "connected", func() bool { return src.Status().Connected })
	prepublish(t, q, 20, 16)
	held := receiveN(ctx, t, src, 8)
	if err := held[0].Ack(ctx); err != nil {
		t.Fatal(err)
	}
	// Less than a batch, but every slot of the prefetch is held: the ack
	// goes at once (before the issue-15 fix, after the delay).
	if n := src.ackStats.acked.Load(); n != 1 {
		t.Errorf("%d acks sent with the whole prefetch held; want 1", n)
	}
	// Without the flush, the broker has no credit to send the 9th
	// delivery until the delay passes (the ack count above is what tells
	// the two apart; the wait only bounds the test).
	wait, cancelWait := context.WithTimeout(ctx, 10*time.Second)
	defer cancelWait()
	d, err := src.Receive(wait)
	if err != nil {
		t.Fatalf("Receive with the prefetch held by 7 handlers and 1 waiting ack = %v; want the 9th delivery", err)
	}
	if n := src.ackStats.acked.Load(); n != 1 {
		t.Errorf("%d acks sent; want 1", n)
	}
	for _, d := range append(held[1:], d) {
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for range 11 {
		d, err := src.Receive(wait)
		if err != nil {
			t.Fatalf("Receive = %v", err)
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := src.Close(ctx); err != nil {
		t.Fatalf("Close = %v", err)
	}
	ch, err := rawConn(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if qi, err := ch.QueueDeclarePassive(q, true, false, false, false, nil); err != nil || qi.Messages != 0 {
		t.Errorf("queue after Close: %+v, %v; want no message", qi, err)
	}
}

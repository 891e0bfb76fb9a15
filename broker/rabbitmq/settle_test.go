package rabbitmq

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// TestPoisonMessageReachesTheDeadLetterQueueAndOthersKeepFlowing publishes
// one message that always fails among good ones: after the delivery budget
// (3) it must be in the dead-letter queue with the attempt count, error and
// source queue in its headers, while every good message is handled once. On
// a classic queue the budget is counted by republishing (HeaderDeliveries),
// on a quorum queue by x-delivery-count.
func TestPoisonMessageReachesTheDeadLetterQueueAndOthersKeepFlowing(t *testing.T) {
	needBroker(t)
	for _, typ := range []string{Classic, Quorum} {
		t.Run(typ, func(t *testing.T) {
			const good = 300
			q := uniqueQueue(t)
			cfg := testConfig(q)
			cfg.Topology.QueueType = typ
			src, err := NewSource(cfg)
			if err != nil {
				t.Fatal(err)
			}
			cnt := newCounter()
			var mu sync.Mutex
			var poisonAttempts []int
			c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
				if m.ID == "poison" {
					mu.Lock()
					poisonAttempts = append(poisonAttempts, m.Attempt)
					mu.Unlock()
					return errors.New("cannot parse order: unexpected EOF")
				}
				cnt.add(m.ID)
				return nil
			}), consumer.WithConcurrency(4), consumer.WithMaxDeliveries(3))
			_, cancel, done := runInBackground(t, c, err)
			defer cancel()
			waitFor(t, 10*time.Second, "connected", func() bool { return src.Status().Connected })
			pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}})
			if err != nil {
				t.Fatal(err)
			}
			defer pub.Close(context.Background())
			publish := func(id string) {
				if err := pub.PublishRaw(context.Background(), "", q, amqp.Publishing{MessageId: id, Body: []byte(id),
					Headers: amqp.Table{"tenant": "acme"}}); err != nil {
					t.Fatal(err)
				}
			}
			publish("poison")
			for i := 0; i < good; i++ {
				publish(strconv.Itoa(i))
			}
			dctx, dcancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer dcancel()
			dead := readQueue(dctx, t, q+".dlq", 1)
			waitFor(t, 20*time.Second, "good messages handled", func() bool { return cnt.distinct() == good })
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Run = %v", err)
			}
			if len(dead) != 1 {
				t.Fatalf("dead letters = %d; want 1", len(dead))
			}
			h := dead[0].Header
			t.Logf("%s: poison attempts %v; dead letter id=%s headers: attempts=%s error=%q source=%s permanent=%s tenant=%s",
				typ, poisonAttempts, dead[0].ID, h[broker.HeaderAttempts], h[broker.HeaderError], h[broker.HeaderSource],
				h[broker.HeaderPermanent], h["tenant"])
			if dead[0].ID != "poison" || h[broker.HeaderAttempts] != "3" || h[broker.HeaderError] != "cannot parse order: unexpected EOF" ||
				h[broker.HeaderSource] != q || h["tenant"] != "acme" {
				t.Errorf("dead letter %q headers %v; want id poison, attempts 3, the error, source %s and the original headers", dead[0].ID, h, q)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(poisonAttempts) != 3 || poisonAttempts[0] != 1 || poisonAttempts[2] != 3 {
				t.Errorf("poison message attempts = %v; want [1 2 3]", poisonAttempts)
			}
			if n := cnt.n.Load(); n != good {
				t.Errorf("good messages handled %d times; want %d", n, good)
			}
			ready, _ := queueCountsIfCtl(t, q)
			if ready > 0 {
				t.Errorf("queue still has %d messages", ready)
			}
		})
	}
}

// TestDelayedRedeliveryDoesNotHoldTheConsumerSlot gives a failing message
// back with a 2s delay (retry.After) on a consumer with concurrency 1: the
// other messages must all be handled while it waits in the retry queue, and
// it must come back after the delay with Attempt 2.
func TestDelayedRedeliveryDoesNotHoldTheConsumerSlot(t *testing.T) {
	needBroker(t)
	const (
		others = 200
		delay  = 2 * time.Second
	)
	q := uniqueQueue(t)
	src, err := NewSource(testConfig(q))
	if err != nil {
		t.Fatal(err)
	}
	cnt := newCounter()
	var (
		mu                sync.Mutex
		firstAt, secondAt time.Time
		othersDoneAt      time.Time
		secondAttempt     int
	)
	c, err := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if m.ID == "slow" {
			if firstAt.IsZero() {
				firstAt = time.Now()
				return retry.After(errors.New("inventory service busy"), delay)
			}
			secondAt, secondAttempt = time.Now(), m.Attempt
			return nil
		}
		cnt.add(m.ID)
		if cnt.distinct() == others {
			othersDoneAt = time.Now()
		}
		return nil
	}), consumer.WithConcurrency(1))
	_, cancel, done := runInBackground(t, c, err)
	defer cancel()
	waitFor(t, 10*time.Second, "connected", func() bool { return src.Status().Connected })
	pub, err := NewPublisher(PublisherConfig{Dialer: Dialer{URL: amqpURL()}})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())
	for i := -1; i < others; i++ {
		id := strconv.Itoa(i)
		if i < 0 {
			id = "slow"
		}
		if err := pub.PublishRaw(context.Background(), "", q, amqp.Publishing{MessageId: id, Body: []byte(id)}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 30*time.Second, "the delayed message back", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return !secondAt.IsZero()
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("delayed: first attempt at 0, %d others done at +%v, second attempt (Attempt=%d) at +%v",
		cnt.distinct(), othersDoneAt.Sub(firstAt).Round(time.Millisecond), secondAttempt, secondAt.Sub(firstAt).Round(time.Millisecond))
	if othersDoneAt.IsZero() || !othersDoneAt.Before(secondAt) {
		t.Errorf("the other messages were not all handled before the delayed one came back (others done %v, delayed back %v)", othersDoneAt, secondAt)
	}
	if secondAt.Sub(firstAt) < delay/2 {
		t.Errorf("delayed message back after %v; want about %v", secondAt.Sub(firstAt), delay)
	}
	if secondAttempt != 2 {
		t.Errorf("delayed message Attempt = %d; want 2", secondAttempt)
	}
}

// queueCountsIfCtl is queueCounts when rabbitmqctl is available, else zeros.
func queueCountsIfCtl(t *testing.T, q string) (int, int) {
	if !ctlUsable() {
		return 0, 0
	}
	return queueCounts(t, q)
}

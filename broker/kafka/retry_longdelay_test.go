package kafka_test

import (
	"context"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
)

// Regression tests for the records due later than their tier's length (a
// delay longer than the longest tier), review round 2, on the Kafka
// protocol (in-process kfake cluster, one per test).

// TestRetryLongDelaysDoNotAddUpAtTheHead: k records requeued for a year in a
// tier of 100 ms, then one requeued for 50 ms. Each long record held the
// head of the tier partition a full tier length from when it got there, so
// the short one came back after k tier lengths (k × 100 ms = 4 s); a
// record written at w must hold the head at most until w + the tier, so
// the short one comes back about a tier length after its failure. The
// bound asserted is half of the old lower bound (k × tier), not a latency.
func TestRetryLongDelaysDoNotAddUpAtTheHead(t *testing.T) {
	const k = 40
	tier := 100 * time.Millisecond
	e := newEnv(t)
	topic, cfg := oneTierSource(t, e, "retry-longk", tier)
	src := newSource(t, cfg)
	defer src.Close(context.Background())
	e.produce(t, topic, 0, k+1, itoa)
	for i := 0; i <= k; i++ {
		d := receive(t, src)
		delay := 365 * 24 * time.Hour
		if i == k {
			delay = 50 * time.Millisecond
		}
		if err := d.(broker.DelayedRequeuer).RequeueAfter(context.Background(), delay); err != nil {
			t.Fatalf("RequeueAfter: %v", err)
		}
	}
	failed := time.Now()
	limit := k * tier / 2
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	d, err := src.Receive(ctx)
	if err != nil {
		t.Fatalf("the record requeued for 50 ms behind %d requeued for a year (tier %v) did not come back within %v (k × tier = %v): %v", k, tier, limit, k*tier, err)
	}
	back := time.Since(failed)
	if m := d.Message(); string(m.Body) != itoa(k) || m.Attempt != 2 {
		t.Errorf("got %s@%d; want %s@2", m.Body, m.Attempt, itoa(k))
	}
	if err := d.Ack(context.Background()); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	t.Logf("the 50 ms retry came back %v after its failure, behind %d year-long retries in a tier of %v", back, k, tier)
}

// TestRetryLongDelayLeavesNoBookkeeping: records requeued with a delay
// between one and two tier lengths are held a tier length, then (due
// within a tier by then) held the rest and handed out. Each left an entry
// (holding the record, body included) in the tier consumer's set of
// records held once already, until the next rebalance: a group that does
// not rebalance grew without bound. Once they are all settled, the tier
// consumer must keep nothing of them.
func TestRetryLongDelayLeavesNoBookkeeping(t *testing.T) {
	const n = 5
	tier := 100 * time.Millisecond
	e := newEnv(t)
	topic, cfg := oneTierSource(t, e, "retry-leak", tier)
	src := newSource(t, cfg)
	defer src.Close(context.Background())
	e.produce(t, topic, 0, n, itoa)
	for i := 0; i < n; i++ {
		d := receive(t, src)
		if err := d.(broker.DelayedRequeuer).RequeueAfter(context.Background(), 190*time.Millisecond); err != nil {
			t.Fatalf("RequeueAfter: %v", err)
		}
	}
	for i := 0; i < n; i++ {
		d := receive(t, src)
		if m := d.Message(); m.Attempt != 2 {
			t.Errorf("got %s@%d; want attempt 2", m.Body, m.Attempt)
		}
		if err := d.Ack(context.Background()); err != nil {
			t.Fatalf("Ack: %v", err)
		}
	}
	if got := kafka.RetryBookkeeping(src); got != 0 {
		t.Errorf("the tier consumer keeps %d records after all %d retries were settled; want 0", got, n)
	}
}

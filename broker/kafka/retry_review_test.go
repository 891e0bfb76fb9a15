package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// Regression tests for the review of the retry topics, on the Kafka
// protocol (in-process kfake cluster, one per test).

// declareFor declares the topology of cfg (its topic, dead-letter topic and
// retry topics).
func declareFor(t *testing.T, cfg kafka.Config) {
	t.Helper()
	src := newSource(t, cfg)
	if err := src.DeclareTopology(context.Background()); err != nil {
		t.Fatalf("DeclareTopology: %v", err)
	}
	if err := src.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// TestRetryTopicsBelongToTheGroup: two groups consume the same topic with
// retry topics; one fails a record once, the other handles it at once. The
// retry must reach the failing group only (it once reached both: the tier
// topics were shared).
func TestRetryTopicsBelongToTheGroup(t *testing.T) {
	e := newEnv(t)
	tiers := []time.Duration{100 * time.Millisecond}
	topic, billing := retryTopicSource(t, e, "retry-groups", "billing", tiers)
	shipping := billing
	shipping.GroupID = "shipping"
	declareFor(t, shipping)
	var bn, sn atomic.Int64
	startMember(t, newSource(t, billing), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if bn.Add(1) == 1 {
			return retry.After(errRetryMe, 100*time.Millisecond)
		}
		return nil
	}))
	startMember(t, newSource(t, shipping), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		sn.Add(1)
		return nil
	}))
	e.produce(t, topic, 0, 1, itoa)
	waitFor(t, "billing's retry and shipping's delivery", 20*time.Second, func() bool { return bn.Load() >= 2 && sn.Load() >= 1 })
	// Give a wrongly shared tier consumer of shipping the time to hand the
	// retry out too (it is due when billing got it).
	time.Sleep(500 * time.Millisecond)
	if b, s := bn.Load(), sn.Load(); b != 2 || s != 1 {
		t.Errorf("billing handled the record %d times, shipping %d; want 2 and 1", b, s)
	}
}

// oneTierSource declares a topic of one partition with one retry tier of
// its own (one partition too) and returns it and its config.
func oneTierSource(t *testing.T, e *env, name string, tier time.Duration) (string, kafka.Config) {
	t.Helper()
	topic := fmt.Sprintf("%s-%d-%d", name, os.Getpid(), topicSeq.Add(1))
	cfg := e.config(topic, "g")
	cfg.RetryTopics = []time.Duration{tier}
	cfg.Topology = kafka.Topology{Partitions: 1, ReplicationFactor: 1}
	declareFor(t, cfg)
	return topic, cfg
}

func receive(t *testing.T, src *kafka.Source) broker.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d, err := src.Receive(ctx)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	return d
}

// TestRetryRecordLaneIsNotTheMainPartitions: a retry record (tier
// partition 0) and a record of the main topic's partition 0 are out at
// once; their Lane values (broker.Sequenced, which a batch consumer uses to
// give back the records after a failed one of the same lane) must differ.
// They were equal: a failed retry record made the runtime give back main
// records handled already.
func TestRetryRecordLaneIsNotTheMainPartitions(t *testing.T) {
	e := newEnv(t)
	topic, cfg := oneTierSource(t, e, "retry-lane", 50*time.Millisecond)
	src := newSource(t, cfg)
	defer src.Close(context.Background())
	e.produce(t, topic, 0, 1, itoa)
	first := receive(t, src)
	if err := first.(broker.DelayedRequeuer).RequeueAfter(context.Background(), 50*time.Millisecond); err != nil {
		t.Fatalf("RequeueAfter: %v", err)
	}
	e.produce(t, topic, 1, 1, itoa)
	a, b := receive(t, src), receive(t, src)
	if string(a.Message().Body) != "0" {
		a, b = b, a
	}
	if string(a.Message().Body) != "0" || a.Message().Attempt != 2 || string(b.Message().Body) != "1" {
		t.Fatalf("got %s@%d and %s@%d; want the retry of 0 and 1", a.Message().Body, a.Message().Attempt, b.Message().Body, b.Message().Attempt)
	}
	la, lb := a.(broker.Sequenced).Lane(), b.(broker.Sequenced).Lane()
	if la == lb {
		t.Errorf("the retry record and the main partition's record share Lane %#x", la)
	}
	for _, d := range []broker.Delivery{a, b} {
		if err := d.Ack(context.Background()); err != nil {
			t.Fatalf("Ack: %v", err)
		}
	}
}

// produceRaw writes one record of its own making to topic.
func produceRaw(t *testing.T, e *env, topic string, m kafkago.Message) {
	t.Helper()
	_, tr := e.client()
	defer tr.CloseIdleConnections()
	w := &kafkago.Writer{Addr: kafkago.TCP(e.brokers...), Topic: topic, Transport: tr, BatchTimeout: time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(context.Background(), m); err != nil {
		t.Fatalf("WriteMessages: %v", err)
	}
}

// failOnce receives the next record, requeues it with delay through the
// retry topic, and returns its retry delivery.
func failOnce(t *testing.T, src *kafka.Source, delay time.Duration) broker.Delivery {
	t.Helper()
	d := receive(t, src)
	if err := d.(broker.DelayedRequeuer).RequeueAfter(context.Background(), delay); err != nil {
		t.Fatalf("RequeueAfter: %v", err)
	}
	r := receive(t, src)
	if r.Message().Attempt != 2 {
		t.Fatalf("got Attempt %d; want the retry (2)", r.Message().Attempt)
	}
	return r
}

// TestRetryCopyKeepsRepeatedHeaders: a record with a header key given
// twice keeps both in its retry copy, in order (they went through a map,
// which kept the last).
func TestRetryCopyKeepsRepeatedHeaders(t *testing.T) {
	e := newEnv(t)
	topic, cfg := oneTierSource(t, e, "retry-headers", 50*time.Millisecond)
	src := newSource(t, cfg)
	defer src.Close(context.Background())
	produceRaw(t, e, topic, kafkago.Message{Value: []byte("x"), Headers: []kafkago.Header{
		{Key: "h", Value: []byte("1")}, {Key: "other", Value: []byte("o")}, {Key: "h", Value: []byte("2")}}})
	r := failOnce(t, src, 50*time.Millisecond)
	if err := r.Ack(context.Background()); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	recs := e.readTopic(t, kafka.RetryTopicName(topic, cfg.GroupID, 50*time.Millisecond), 1)
	if len(recs) != 1 {
		t.Fatalf("the retry topic holds %d records; want 1", len(recs))
	}
	var hs []string
	for _, h := range recs[0].Headers {
		if !strings.HasPrefix(h.Key, "x-queuekit-") {
			hs = append(hs, h.Key+"="+string(h.Value))
		}
	}
	if want := []string{"h=1", "other=o", "h=2"}; !slices.Equal(hs, want) {
		t.Errorf("the retry copy's own headers are %v; want %v", hs, want)
	}
}

// TestRetryCopyHasTheWriteTime: the retry copy is written with the time of
// the failure (so that the tier topic's time-based retention and
// message.timestamp limits count from then, not from the original record's
// time), and the retry delivery's Message.Time is still the original's.
func TestRetryCopyHasTheWriteTime(t *testing.T) {
	e := newEnv(t)
	topic, cfg := oneTierSource(t, e, "retry-time", 50*time.Millisecond)
	src := newSource(t, cfg)
	defer src.Close(context.Background())
	orig := time.Now().Add(-48 * time.Hour).Truncate(time.Millisecond)
	produceRaw(t, e, topic, kafkago.Message{Value: []byte("x"), Time: orig})
	before := time.Now().Add(-time.Minute)
	r := failOnce(t, src, 50*time.Millisecond)
	if got := r.Message().Time; !got.Equal(orig) {
		t.Errorf("the retry delivery's Time is %v; want the original %v", got, orig)
	}
	if err := r.Ack(context.Background()); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	recs := e.readTopic(t, kafka.RetryTopicName(topic, cfg.GroupID, 50*time.Millisecond), 1)
	if len(recs) != 1 {
		t.Fatalf("the retry topic holds %d records; want 1", len(recs))
	}
	if got := recs[0].Time; got.Before(before) {
		t.Errorf("the retry copy's timestamp is %v; want the time of the failure (after %v)", got, before)
	}
}

// TestRetryTopicsCollidingNamesRefused: Kafka refuses a topic whose name
// differs from another's only by '.' against '_' (their metric names
// collide), so NewSource refuses a DeadLetterTopic that collides so with a
// retry topic or with Topic.
func TestRetryTopicsCollidingNamesRefused(t *testing.T) {
	for _, tc := range []struct{ topic, dlt string }{
		{"orders", "orders_retry_g_1s"},
		{"orders", "orders.retry_g.1s"},
		{"a.b", "a_b"},
	} {
		src, err := kafka.NewSource(kafka.Config{Brokers: []string{"127.0.0.1:9092"}, GroupID: "g", Topic: tc.topic,
			DeadLetterTopic: tc.dlt, RetryTopics: []time.Duration{time.Second}})
		if err == nil {
			src.Close(context.Background())
		}
		if !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("NewSource(Topic %s, DeadLetterTopic %s) = %v; want an error wrapping ErrInvalidConfig", tc.topic, tc.dlt, err)
		} else {
			t.Logf("%v", err)
		}
	}
}

// TestRetryTierGroupRefusedIsReported: the coordinator refuses the group
// of a tier consumer (GROUP_AUTHORIZATION_FAILED on FindCoordinator): the
// retries of that tier never come back, so Status().Err and a
// broker.EventReconnecting event must say so, naming the tier group (they
// said nothing).
func TestRetryTierGroupRefusedIsReported(t *testing.T) {
	e := newEnv(t)
	e.needKfake(t)
	_, cfg := oneTierSource(t, e, "retry-acl", 50*time.Millisecond)
	const tierGroup = "g.retry.50ms"
	e.cluster.ControlKey(int16(kmsg.FindCoordinator), func(kr kmsg.Request) (kmsg.Response, error, bool) {
		e.cluster.KeepControl()
		req := kr.(*kmsg.FindCoordinatorRequest)
		if req.CoordinatorKey != tierGroup && !slices.Contains(req.CoordinatorKeys, tierGroup) {
			return nil, nil, false
		}
		resp := req.ResponseKind().(*kmsg.FindCoordinatorResponse)
		resp.Version = req.Version
		resp.ErrorCode = kerr.GroupAuthorizationFailed.Code
		for _, k := range req.CoordinatorKeys {
			rc := kmsg.NewFindCoordinatorResponseCoordinator()
			rc.Key = k
			rc.ErrorCode = kerr.GroupAuthorizationFailed.Code
			resp.Coordinators = append(resp.Coordinators, rc)
		}
		return resp, nil, true
	})
	src := newSource(t, cfg)
	var reported atomic.Bool
	src.SetEventHook(func(ev broker.Event) {
		if ev.Kind == broker.EventReconnecting && ev.Err != nil && strings.Contains(ev.Err.Error(), tierGroup) {
			reported.Store(true)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		src.Receive(ctx) // joins the groups; nothing to receive
	}()
	defer func() {
		cancel()
		<-done
		src.Close(context.Background())
	}()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && !(reported.Load() && src.Status().Err != nil) {
		time.Sleep(20 * time.Millisecond)
	}
	st := src.Status()
	if st.Err == nil || !strings.Contains(st.Err.Error(), tierGroup) {
		t.Errorf("Status = %+v; want an Err naming the tier group %s", st, tierGroup)
	} else {
		t.Logf("Status().Err: %v", st.Err)
	}
	if !reported.Load() {
		t.Errorf("no EventReconnecting naming the tier group %s", tierGroup)
	}
}

// TestRetryLongDelayDoesNotHoldTheTier: a record requeued with a delay far
// longer than the longest tier (an hour, in a tier of 100 ms) is the head
// of its tier partition; a record requeued after it with 100 ms must come
// back within a few tier lengths, not after the hour (it waited behind it:
// the head-of-line wait had no bound).
func TestRetryLongDelayDoesNotHoldTheTier(t *testing.T) {
	e := newEnv(t)
	topic, cfg := oneTierSource(t, e, "retry-long", 100*time.Millisecond)
	src := newSource(t, cfg)
	defer src.Close(context.Background())
	e.produce(t, topic, 0, 2, func(int) string { return "k" })
	for _, delay := range []time.Duration{time.Hour, 100 * time.Millisecond} {
		d := receive(t, src)
		if err := d.(broker.DelayedRequeuer).RequeueAfter(context.Background(), delay); err != nil {
			t.Fatalf("RequeueAfter: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d, err := src.Receive(ctx)
	if err != nil {
		t.Fatalf("the record requeued for 100 ms behind one requeued for an hour did not come back within 5 s: %v", err)
	}
	if m := d.Message(); string(m.Body) != "1" || m.Attempt != 2 {
		t.Errorf("got %s@%d; want 1@2", m.Body, m.Attempt)
	}
	if err := d.Ack(context.Background()); err != nil {
		t.Fatalf("Ack: %v", err)
	}
}

// TestRetryStrandedTierIsReported: a retry topic of the group's that the
// config no longer has (the tiers changed, or retry topics were turned
// off) still holds a record nobody consumes: Status().Err must name it
// (those retries were stranded silently).
func TestRetryStrandedTierIsReported(t *testing.T) {
	e := newEnv(t)
	topic, cfg := oneTierSource(t, e, "retry-stranded", 50*time.Millisecond)
	old := kafka.RetryTopicName(topic, cfg.GroupID, 5*time.Second)
	e.createTopic(t, old, 1)
	produceRaw(t, e, old, kafkago.Message{Value: []byte("pending retry")})
	for _, tiers := range [][]time.Duration{nil, {50 * time.Millisecond}} {
		cfg.RetryTopics = tiers
		src := newSource(t, cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		src.Receive(ctx) // starts the Source; nothing to receive
		cancel()
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) && src.Status().Err == nil {
			time.Sleep(20 * time.Millisecond)
		}
		st := src.Status()
		if st.Err == nil || !strings.Contains(st.Err.Error(), old) {
			t.Errorf("RetryTopics %v: Status = %+v; want an Err naming the stranded retry topic %s", tiers, st, old)
		} else {
			t.Logf("RetryTopics %v: Status().Err: %v", tiers, st.Err)
		}
		if err := src.Close(context.Background()); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
}

package franz_test

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/franz"
	"github.com/queuekit/queuekit/consumer"
	"github.com/queuekit/queuekit/retry"
)

// The kafka adapter's review tests of the retry topics, ported, and the
// interoperability of the wire format; on the Kafka protocol (in-process
// kfake cluster, one per test).

// produceRecord writes r and waits for its acknowledgement.
func produceRecord(t *testing.T, e *env, r *kgo.Record) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.cl.ProduceSync(ctx, r).FirstErr(); err != nil {
		t.Fatalf("produce to %s: %v", r.Topic, err)
	}
}

// failOnce receives the next record, requeues it with delay through the
// retry topic, and returns its retry delivery.
func failOnce(t *testing.T, src *franz.Source, delay time.Duration) broker.Delivery {
	t.Helper()
	requeue(t, receive(t, src), delay)
	r := receive(t, src)
	if r.Message().Attempt != 2 {
		t.Fatalf("got Attempt %d; want the retry (2)", r.Message().Attempt)
	}
	return r
}

// TestRetryTopicsPauseHoldsRetryRecords: a paused Source hands out no retry
// record, due or not; after Resume the record comes, with Attempt 2, from
// the Source's own Receive (no runtime in between).
func TestRetryTopicsPauseHoldsRetryRecords(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic, cfg := retrySetup(t, e, "retry-pause", "g", partitions, []time.Duration{100 * time.Millisecond})
	produceKeys(t, e, topic, 0, 1, strconv.Itoa)
	src := newSource(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d := receive(t, src)
	id := d.Message().ID
	requeue(t, d, 100*time.Millisecond)
	if err := src.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 700*time.Millisecond)
	if d, err := src.Receive(short); err == nil {
		t.Errorf("a paused Source handed out %s (Attempt %d)", d.Message().ID, d.Message().Attempt)
	}
	cancelShort()
	if err := src.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	d, err := src.Receive(ctx)
	if err != nil {
		t.Fatalf("Receive after Resume: %v", err)
	}
	if m := d.Message(); m.ID != id || m.Attempt != 2 || m.Topic != topic {
		t.Errorf("after Resume: %s %s Attempt %d; want %s %s Attempt 2", m.Topic, m.ID, m.Attempt, topic, id)
	}
	if err := d.Ack(ctx); err != nil {
		t.Errorf("Ack: %v", err)
	}
}

// TestRetryPauseResumeRaceTiersFollowTheLastCall: Pause and Resume called
// at once, many times; afterwards the tier consumers must be paused exactly
// when the main Source is. No cluster call: Pause and Resume are local.
func TestRetryPauseResumeRaceTiersFollowTheLastCall(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, cfg := retrySetup(t, e, "retry-pauserace", "g", 1, []time.Duration{100 * time.Millisecond, time.Second})
	src := newSource(t, cfg)
	ctx := context.Background()
	for i := range 200 {
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range 20 {
				src.Pause(ctx)
			}
		}()
		go func() {
			defer wg.Done()
			for range 20 {
				src.Resume(ctx)
			}
		}()
		wg.Wait()
		main, tiers := franz.PauseStates(src)
		for j, p := range tiers {
			if p != main {
				t.Fatalf("round %d: main Source paused = %v, tier %d paused = %v", i, main, j, p)
			}
		}
	}
}

// TestRetryTopicsBelongToTheGroup: two groups consume the same topic with
// retry topics; one fails a record once, the other handles it at once. The
// retry reaches the failing group only.
func TestRetryTopicsBelongToTheGroup(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tiers := []time.Duration{100 * time.Millisecond}
	topic, billing := retrySetup(t, e, "retry-groups", "billing", partitions, tiers)
	shipping := billing
	shipping.GroupID = "shipping"
	declare(t, shipping)
	var bn, sn atomic.Int64
	runConsumer(t, newSource(t, billing), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if bn.Add(1) == 1 {
			return retry.After(errRetryMe, 100*time.Millisecond)
		}
		return nil
	}))
	runConsumer(t, newSource(t, shipping), consumer.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		sn.Add(1)
		return nil
	}))
	produceKeys(t, e, topic, 0, 1, strconv.Itoa)
	waitUntil(t, "billing's retry and shipping's delivery", 20*time.Second, func() bool { return bn.Load() >= 2 && sn.Load() >= 1 })
	time.Sleep(500 * time.Millisecond) // time for a wrongly shared tier to hand it out too
	if b, s := bn.Load(), sn.Load(); b != 2 || s != 1 {
		t.Errorf("billing handled the record %d times, shipping %d; want 2 and 1", b, s)
	}
}

// TestRetryRecordLaneIsNotTheMainPartitions: a retry record (tier
// partition 0) and a record of the main topic's partition 0 are out at
// once; their Lane values (broker.Sequenced) must differ, or a failed
// retry record would make a batch runtime give back main records.
func TestRetryRecordLaneIsNotTheMainPartitions(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic, cfg := oneTier(t, e, "retry-lane", 50*time.Millisecond)
	src := newSource(t, cfg)
	produceKeys(t, e, topic, 0, 1, strconv.Itoa)
	requeue(t, receive(t, src), 50*time.Millisecond)
	produceKeys(t, e, topic, 1, 1, strconv.Itoa)
	a, b := receive(t, src), receive(t, src)
	if string(a.Message().Body) != "0" {
		a, b = b, a
	}
	if string(a.Message().Body) != "0" || a.Message().Attempt != 2 || string(b.Message().Body) != "1" {
		t.Fatalf("got %s@%d and %s@%d; want the retry of 0 and 1", a.Message().Body, a.Message().Attempt, b.Message().Body, b.Message().Attempt)
	}
	if la, lb := a.(broker.Sequenced).Lane(), b.(broker.Sequenced).Lane(); la == lb {
		t.Errorf("the retry record and the main partition's record share Lane %#x", la)
	}
	for _, d := range []broker.Delivery{a, b} {
		if err := d.Ack(context.Background()); err != nil {
			t.Fatalf("Ack: %v", err)
		}
	}
}

// TestRetryRecordComesAloneInABatch: ReceiveBatch hands a due retry record
// out first, in a batch of its own, with Attempt 2; the main topic's
// records come in the next batch.
func TestRetryRecordComesAloneInABatch(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic, cfg := oneTier(t, e, "retry-batch", 50*time.Millisecond)
	src := newSource(t, cfg)
	produceKeys(t, e, topic, 0, 1, strconv.Itoa)
	requeue(t, receive(t, src), 50*time.Millisecond)
	produceKeys(t, e, topic, 1, 2, strconv.Itoa)
	time.Sleep(300 * time.Millisecond) // the retry is due, and fetched
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got [][]string
	for n := 0; n < 3; {
		ds, err := src.ReceiveBatch(ctx, 10, 50*time.Millisecond)
		if err != nil {
			t.Fatalf("ReceiveBatch: %v (so far %v)", err, got)
		}
		var b []string
		for _, d := range ds {
			b = append(b, string(d.Message().Body)+"@"+strconv.Itoa(d.Message().Attempt))
			if err := d.Ack(ctx); err != nil {
				t.Fatalf("Ack: %v", err)
			}
		}
		got = append(got, b)
		n += len(ds)
	}
	if len(got) != 2 || !slices.Equal(got[0], []string{"0@2"}) || !slices.Equal(got[1], []string{"1@1", "2@1"}) {
		t.Errorf("batches %v; want [[0@2] [1@1 2@1]]", got)
	}
}

// TestRetryCopyKeepsRepeatedHeaders: a record with a header key given
// twice keeps both in its retry copy, in order.
func TestRetryCopyKeepsRepeatedHeaders(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic, cfg := oneTier(t, e, "retry-headers", 50*time.Millisecond)
	src := newSource(t, cfg)
	produceRecord(t, e, &kgo.Record{Topic: topic, Value: []byte("x"), Headers: []kgo.RecordHeader{
		{Key: "h", Value: []byte("1")}, {Key: "other", Value: []byte("o")}, {Key: "h", Value: []byte("2")}}})
	r := failOnce(t, src, 50*time.Millisecond)
	if err := r.Ack(context.Background()); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	recs := e.recordsOf(t, franz.RetryTopicName(topic, cfg.GroupID, 50*time.Millisecond))
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
// the failure, and the retry delivery's Message.Time is the original's.
func TestRetryCopyHasTheWriteTime(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic, cfg := oneTier(t, e, "retry-time", 50*time.Millisecond)
	src := newSource(t, cfg)
	orig := time.Now().Add(-48 * time.Hour).Truncate(time.Millisecond)
	produceRecord(t, e, &kgo.Record{Topic: topic, Value: []byte("x"), Timestamp: orig})
	before := time.Now().Add(-time.Minute)
	r := failOnce(t, src, 50*time.Millisecond)
	if got := r.Message().Time; !got.Equal(orig) {
		t.Errorf("the retry delivery's Time is %v; want the original %v", got, orig)
	}
	if err := r.Ack(context.Background()); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	recs := e.recordsOf(t, franz.RetryTopicName(topic, cfg.GroupID, 50*time.Millisecond))
	if len(recs) != 1 {
		t.Fatalf("the retry topic holds %d records; want 1", len(recs))
	}
	if got := recs[0].Timestamp; got.Before(before) {
		t.Errorf("the retry copy's timestamp is %v; want the time of the failure (after %v)", got, before)
	}
	h := headerMap(recs[0].Headers)
	if h[franz.HeaderTime] != strconv.FormatInt(orig.UnixMilli(), 10) || h[franz.HeaderGroup] != "g" || h[franz.HeaderAttempt] != "2" {
		t.Errorf("retry headers time %q group %q attempt %q; want %d, g, 2", h[franz.HeaderTime], h[franz.HeaderGroup], h[franz.HeaderAttempt], orig.UnixMilli())
	}
}

// TestRetryRecordOfTheKafkaAdapterIsHandled: a tier record written as the
// kafka-go adapter writes one (its headers, by hand: this module does not
// depend on kafka-go) is handed out by this adapter as the original
// record — not before its due time, with its topic, ID, time and attempt —
// its tier offset is committed in the shared tier group, and dead-lettering
// it writes the original coordinates and time without the retry headers.
func TestRetryRecordOfTheKafkaAdapterIsHandled(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic, cfg := oneTier(t, e, "retry-interop", time.Second)
	tier := franz.RetryTopicName(topic, "g", time.Second)
	orig := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	due := time.Now().Add(300 * time.Millisecond)
	produceRecord(t, e, &kgo.Record{Topic: tier, Key: []byte("k"), Value: []byte("from kafka-go"), Headers: []kgo.RecordHeader{
		{Key: "user", Value: []byte("u")},
		{Key: "x-queuekit-topic", Value: []byte(topic)},
		{Key: "x-queuekit-partition", Value: []byte("3")},
		{Key: "x-queuekit-offset", Value: []byte("42")},
		{Key: "x-queuekit-attempt", Value: []byte("3")},
		{Key: "x-queuekit-due", Value: []byte(strconv.FormatInt(due.UnixMilli()+1, 10))},
		{Key: "x-queuekit-group", Value: []byte("g")},
		{Key: "x-queuekit-time", Value: []byte(strconv.FormatInt(orig.UnixMilli(), 10))},
	}})
	src := newSource(t, cfg)
	d := receive(t, src)
	at := time.Now()
	m := d.Message()
	t.Logf("Kafka protocol (in-process kfake cluster): a kafka-go-format retry record came %v after its due time: %s %s Attempt %d Time %v",
		at.Sub(due), m.Topic, m.ID, m.Attempt, m.Time)
	if at.Before(due) {
		t.Errorf("handed out %v before its due time", due.Sub(at))
	}
	if m.Topic != topic || m.ID != topic+"/3/42" || m.Attempt != 3 || !m.Time.Equal(orig) || string(m.Body) != "from kafka-go" || m.Header["user"] != "u" {
		t.Errorf("got %s %s Attempt %d Time %v Body %q user %q; want %s %s/3/42 Attempt 3 Time %v",
			m.Topic, m.ID, m.Attempt, m.Time, m.Body, m.Header["user"], topic, topic, orig)
	}
	if err := d.DeadLetter(context.Background(), broker.Reason{Err: "bad", Attempts: 3}); err != nil {
		t.Fatalf("DeadLetter: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dl := e.readAll(ctx, t, topic+".dlt", 1)
	if len(dl) != 1 {
		t.Fatalf("%d dead letters; want 1", len(dl))
	}
	h := headerMap(dl[0].Headers)
	if h[franz.HeaderTopic] != topic || h[franz.HeaderPartition] != "3" || h[franz.HeaderOffset] != "42" || !dl[0].Timestamp.Equal(orig) || h["user"] != "u" {
		t.Errorf("dead letter origin %s/%s/%s time %v user %q; want %s/3/42 time %v", h[franz.HeaderTopic], h[franz.HeaderPartition], h[franz.HeaderOffset], dl[0].Timestamp, h["user"], topic, orig)
	}
	for _, k := range []string{franz.HeaderDue, franz.HeaderAttempt, franz.HeaderGroup, franz.HeaderTime} {
		if _, ok := h[k]; ok {
			t.Errorf("the dead letter carries %s", k)
		}
	}
	waitUntil(t, "the tier offset committed in g.retry.1s", 10*time.Second, func() bool {
		return e.committed(t, "g.retry.1s", tier)[0] == 1
	})
}

// TestRetryRecordOfAnotherGroupIsSkipped: a record in a tier topic that
// names another group is committed past without being handed out.
func TestRetryRecordOfAnotherGroupIsSkipped(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, cfg := oneTier(t, e, "retry-other", 50*time.Millisecond)
	tier := franz.RetryTopicName(cfg.Topic, "g", 50*time.Millisecond)
	for _, group := range []string{"other", "g"} {
		produceRecord(t, e, &kgo.Record{Topic: tier, Value: []byte(group), Headers: []kgo.RecordHeader{
			{Key: franz.HeaderGroup, Value: []byte(group)}, {Key: franz.HeaderDue, Value: []byte("0")}}})
	}
	src := newSource(t, cfg)
	d := receive(t, src)
	if string(d.Message().Body) != "g" {
		t.Errorf("handed out the record of group %s", d.Message().Body)
	}
	if err := d.Ack(context.Background()); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	waitUntil(t, "both tier offsets committed", 10*time.Second, func() bool {
		return e.committed(t, "g.retry.50ms", tier)[0] == 2
	})
}

// statusErrWithin starts src (a Receive that finds nothing) and waits up to
// 5 s for Status().Err to mention want.
func statusErrWithin(t *testing.T, src *franz.Source, want string) broker.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	src.Receive(ctx) // starts the Source; nothing to receive
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if st := src.Status(); st.Err != nil && strings.Contains(st.Err.Error(), want) {
			return st
		}
		time.Sleep(20 * time.Millisecond)
	}
	return src.Status()
}

// TestRetryTierGroupRefusedIsReported: the coordinator refuses the group
// of a tier consumer (GROUP_AUTHORIZATION_FAILED on FindCoordinator): its
// retries never come back, so Status().Err and a broker.EventReconnecting
// event say so, naming the tier group.
func TestRetryTierGroupRefusedIsReported(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, cfg := oneTier(t, e, "retry-acl", 50*time.Millisecond)
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
	st := statusErrWithin(t, src, "GROUP_AUTHORIZATION_FAILED")
	if st.Err == nil || !strings.Contains(st.Err.Error(), tierGroup) || !strings.Contains(st.Err.Error(), "GROUP_AUTHORIZATION_FAILED") {
		t.Errorf("Status = %+v; want an Err naming the tier group %s and the refusal", st, tierGroup)
	} else {
		t.Logf("Status().Err: %v", st.Err)
	}
	if !reported.Load() {
		t.Errorf("no EventReconnecting naming the tier group %s", tierGroup)
	}
}

// TestRetryTierTopicMissingIsReported: a tier topic that does not exist
// (not declared): Status().Err names it (its retries would not come back).
func TestRetryTierTopicMissingIsReported(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, "retry-missing", 1) // the topic and its dead-letter topic only
	cfg := e.config(topic, "g")
	cfg.RetryTopics = []time.Duration{50 * time.Millisecond}
	src := newSource(t, cfg)
	tier := franz.RetryTopicName(topic, "g", 50*time.Millisecond)
	st := statusErrWithin(t, src, tier)
	if st.Err == nil || !strings.Contains(st.Err.Error(), tier) {
		t.Errorf("Status = %+v; want an Err naming the missing retry topic %s", st, tier)
	} else {
		t.Logf("Status().Err: %v", st.Err)
	}
}

// TestRetryStrandedTierIsReported: a retry topic of the group's that the
// config no longer has (the tiers changed, or retry topics were turned
// off) still holds a record nobody consumes: Status().Err names it.
func TestRetryStrandedTierIsReported(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic, cfg := oneTier(t, e, "retry-stranded", 50*time.Millisecond)
	old := franz.RetryTopicName(topic, cfg.GroupID, 5*time.Second)
	e.createTopic(t, old, 1)
	produceRecord(t, e, &kgo.Record{Topic: old, Value: []byte("pending retry")})
	for _, tiers := range [][]time.Duration{nil, {50 * time.Millisecond}} {
		cfg.RetryTopics = tiers
		src, err := franz.NewSource(cfg)
		if err != nil {
			t.Fatalf("NewSource: %v", err)
		}
		st := statusErrWithin(t, src, old)
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

package kafka_test

// Regression tests for the review of the Kafka dead letters (issue 11,
// review R1), against the Kafka protocol (in-process kfake cluster). Each
// failed on the code before its fix.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/kafka"
)

// produceRecs writes recs to topic's partition p.
func (e *env) produceRecs(t testing.TB, topic string, p int, recs ...kafkago.Record) {
	t.Helper()
	cli, tr := e.client()
	defer tr.CloseIdleConnections()
	resp, err := cli.Produce(context.Background(), &kafkago.ProduceRequest{Topic: topic, Partition: p, RequiredAcks: kafkago.RequireAll, Records: kafkago.NewRecordReader(recs...)})
	if err == nil && resp.Error != nil {
		err = resp.Error
	}
	if err != nil {
		t.Fatalf("produce %s/%d: %v", topic, p, err)
	}
}

// dlRecord is a dead letter of source as a Source writes it.
func dlRecord(key, body, source string, part int, off int64) kafkago.Record {
	h := map[string]string{
		broker.HeaderError:    "boom",
		broker.HeaderSource:   source,
		broker.HeaderAttempts: "3",
		broker.HeaderFailedAt: time.Now().UTC().Format(time.RFC3339Nano),
		kafka.HeaderTopic:     source,
		kafka.HeaderPartition: fmt.Sprint(part),
		kafka.HeaderOffset:    fmt.Sprint(off),
	}
	var hs []kafkago.Header
	for k, v := range h {
		hs = append(hs, kafkago.Header{Key: k, Value: []byte(v)})
	}
	return kafkago.Record{Time: time.Now(), Key: kafkago.NewBytes([]byte(key)), Value: kafkago.NewBytes([]byte(body)), Headers: hs}
}

// createTopicWith creates topic with one partition and the config given.
func (e *env) createTopicWith(t testing.TB, topic string, cfg ...kafkago.ConfigEntry) {
	t.Helper()
	cli, tr := e.client()
	defer tr.CloseIdleConnections()
	resp, err := cli.CreateTopics(context.Background(), &kafkago.CreateTopicsRequest{Topics: []kafkago.TopicConfig{
		{Topic: topic, NumPartitions: 1, ReplicationFactor: 1, ConfigEntries: cfg},
	}})
	if err != nil {
		t.Fatalf("CreateTopics: %v", err)
	}
	if err := resp.Errors[topic]; err != nil {
		t.Fatalf("CreateTopics %s: %v", topic, err)
	}
}

// holdFirst makes the first request of kind key wait until release is
// closed; reached is closed when it arrives.
func (e *env) holdFirst(key int16) (reached, release chan struct{}) {
	var armed atomic.Bool
	armed.Store(true)
	reached, release = make(chan struct{}), make(chan struct{})
	e.cluster.ControlKey(key, func(kmsg.Request) (kmsg.Response, error, bool) {
		if armed.CompareAndSwap(true, false) {
			close(reached)
			e.cluster.SleepControl(func() { <-release })
		}
		return nil, nil, false
	})
	return reached, release
}

// R1 #1: a Redrive that read the partition's end before a concurrent
// Redrive committed past it took the partition for recreated, went back to
// the log start and sent every dead letter handled before (purged ones
// too) again.
func TestIssue11R1ConcurrentCommitIsNotARecreation(t *testing.T) {
	for _, purge := range []bool{false, true} {
		t.Run(fmt.Sprintf("purged=%v", purge), func(t *testing.T) {
			e := newEnv(t)
			e.needKfake(t)
			topic := e.dlTopics(t, "r1-reset", 1)
			dlt := topic + ".dlt"
			ctx := dlCtx(t)
			d := newDeadLetters(t, e, topic)
			for i := range 100 {
				e.produceRecs(t, dlt, 0, dlRecord("old", "old", topic, 0, int64(i)))
			}
			var err error
			if purge {
				_, err = d.Purge(ctx, broker.DeadLetterSelection{All: true}, false)
			} else {
				_, err = d.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
			}
			if err != nil {
				t.Fatal(err)
			}
			for i := range 5 {
				e.produceRecs(t, dlt, 0, dlRecord("new1", "new1", topic, 0, int64(i)))
			}
			// The next call (A) waits in its first OffsetFetch while B runs.
			reached, release := e.holdFirst(kmsg.OffsetFetch.Int16())
			var wg sync.WaitGroup
			var errA error
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errA = d.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
			}()
			<-reached
			for i := range 5 {
				e.produceRecs(t, dlt, 0, dlRecord("new2", "new2", topic, 0, int64(i)))
			}
			if _, err := newDeadLetters(t, e, topic).Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{}); err != nil {
				t.Fatalf("B: %v", err)
			}
			close(release)
			wg.Wait()
			if errA != nil {
				t.Fatalf("A: %v", errA)
			}
			old := 0
			for _, m := range e.readTopic(t, topic, partitions) {
				if string(m.Key) == "old" {
					old++
				}
			}
			want := 100
			if purge {
				want = 0
			}
			if old != want {
				t.Errorf("the 100 dead letters handled before both calls reached the source %d times; want %d", old, want)
			}
			if n := count(t, d, broker.DeadLetterFilter{}); n != 0 {
				t.Errorf("Count = %d after both redrives; want 0", n)
			}
		})
	}
}

// R1 #2: a redrive wrote into the adapter's own done topic (named by the
// dead letter's headers or as Destination), where the copy read as a done
// marker and hid another dead letter.
func TestIssue11R1RedriveNeverWritesTheDoneTopic(t *testing.T) {
	e := newEnv(t)
	topic := e.dlTopics(t, "r1-done", 1)
	dlt := topic + ".dlt"
	done := dlt + kafka.DeadLetterDoneSuffix
	e.createTopicWith(t, done, kafkago.ConfigEntry{ConfigName: "cleanup.policy", ConfigValue: "compact"})
	e.createTopic(t, topic+"-other", 1)
	// 0:0 names the done topic as its source and has the key "0:1".
	e.produceRecs(t, dlt, 0, dlRecord("0:1", "payload", done, 0, 0))
	e.produceRecs(t, dlt, 0, dlRecord("victim", "important", topic, 0, 1))
	// 0:2 names another topic.
	e.produceRecs(t, dlt, 0, dlRecord("other", "x", topic+"-other", 0, 2))
	d := newDeadLetters(t, e, topic)
	ctx := dlCtx(t)
	sel := func(ids ...string) broker.DeadLetterSelection {
		return broker.DeadLetterSelection{DeadLetterFilter: broker.DeadLetterFilter{IDs: ids}}
	}
	res, err := d.Redrive(ctx, sel("0:0", "0:2"), broker.RedriveOptions{})
	if !errors.Is(err, broker.ErrNoSource) || len(res.Skipped) != 2 || len(res.Done) != 0 {
		t.Errorf("Redrive of dead letters naming the done topic and another topic: %+v, %v; want both skipped with ErrNoSource", res, err)
	}
	for _, dest := range []string{done, dlt, "x" + kafka.DeadLetterDoneSuffix} {
		_, err := d.Redrive(ctx, sel("0:0"), broker.RedriveOptions{Destination: dest})
		if !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("Redrive to Destination %s: %v; want ErrInvalidConfig", dest, err)
		}
	}
	if got := ids(listAll(t, d, broker.DeadLetterQuery{})); strings.Join(got, ",") != "0:0,0:1,0:2" {
		t.Errorf("List = %v; want every dead letter still there", got)
	}
	if n := len(e.readTopic(t, topic+"-other", 1)); n != 0 {
		t.Errorf("the topic named by a header got %d records", n)
	}
	// A done marker without a fingerprint does not hide a dead letter.
	e.produceRecs(t, done, 0, kafkago.Record{Key: kafkago.NewBytes([]byte("0:1")), Value: kafkago.NewBytes([]byte("x"))})
	if n := count(t, d, broker.DeadLetterFilter{}); n != 3 {
		t.Errorf("Count = %d with a done marker without a fingerprint; want 3", n)
	}
}

// R1 #3: commit checked, then committed: a slower concurrent call's lower
// offset landed last and the progress moved back.
func TestIssue11R1ProgressNeverMovesBack(t *testing.T) {
	e := newEnv(t)
	e.needKfake(t)
	topic := e.dlTopics(t, "r1-regress", 1)
	dlt := topic + ".dlt"
	for i := range 10 {
		e.produceRecs(t, dlt, 0, dlRecord("k", "b", topic, 0, int64(i)))
	}
	ctx := dlCtx(t)
	reached, release := e.holdFirst(kmsg.OffsetCommit.Int16())
	dA, dB := newDeadLetters(t, e, topic), newDeadLetters(t, e, topic)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		dA.Redrive(ctx, broker.DeadLetterSelection{All: true, Max: 3}, broker.RedriveOptions{})
	}()
	<-reached
	if _, err := dB.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{}); err != nil {
		t.Fatal(err)
	}
	close(release)
	wg.Wait()
	if n := count(t, dA, broker.DeadLetterFilter{}); n != 0 {
		t.Errorf("Count after both = %d; want 0 (the progress moved back)", n)
	}
}

// R1 #4: copies went in 512 KiB requests whatever the source topic's
// max.message.bytes, and one copy the source refuses failed the whole
// Redrive.
func TestIssue11R1RedriveFitsTheSourceMessageSize(t *testing.T) {
	e := newEnv(t)
	ctx := dlCtx(t)
	t.Run("batches", func(t *testing.T) {
		topic := fmt.Sprintf("r1-batch-%d", topicSeq.Add(1))
		e.createTopicWith(t, topic, kafkago.ConfigEntry{ConfigName: "max.message.bytes", ConfigValue: "16384"})
		e.createTopic(t, topic+".dlt", 1)
		var recs []kafkago.Record
		for i := range 100 {
			recs = append(recs, dlRecord(fmt.Sprint(i), strings.Repeat("x", 1000), topic, 0, int64(i)))
		}
		e.produceRecs(t, topic+".dlt", 0, recs...)
		d := newDeadLetters(t, e, topic)
		res, err := d.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
		if err != nil || len(res.Done) != 100 {
			t.Errorf("Redrive of 100 dead letters of 1 KB (the source takes 16 KB a batch): done %d, %.300v", len(res.Done), err)
		}
	})
	t.Run("one too large", func(t *testing.T) {
		topic := fmt.Sprintf("r1-large-%d", topicSeq.Add(1))
		e.createTopicWith(t, topic, kafkago.ConfigEntry{ConfigName: "max.message.bytes", ConfigValue: "4000"})
		e.createTopic(t, topic+".dlt", 1)
		e.produceRecs(t, topic+".dlt", 0, dlRecord("big", strings.Repeat("x", 5000), topic, 0, 0))
		var recs []kafkago.Record
		for i := 1; i < 300; i++ {
			recs = append(recs, dlRecord(fmt.Sprint(i), "small", topic, 0, int64(i)))
		}
		e.produceRecs(t, topic+".dlt", 0, recs...)
		d := newDeadLetters(t, e, topic)
		res, err := d.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
		if len(res.Done) != 299 || len(res.Skipped) != 1 || res.Skipped[0].ID != "0:0" || !errors.Is(err, kafkago.MessageSizeTooLarge) {
			t.Errorf("Redrive: done %d skipped %v err %.300v; want 299 done and 0:0 skipped as too large", len(res.Done), res.Skipped, err)
		}
		if got := ids(listAll(t, d, broker.DeadLetterQuery{})); len(got) != 1 || got[0] != "0:0" {
			t.Errorf("List after = %v; want [0:0]", got)
		}
		if n := len(e.readTopic(t, topic, 1)); n != 299 {
			t.Errorf("the source holds %d copies; want 299", n)
		}
	})
}

// R1 #5, #6: Close with an ended ctx and no call in progress returned an
// error; a zero DeadLetters panicked.
func TestIssue11R1CloseAndZeroValue(t *testing.T) {
	d, err := kafka.NewDeadLetters(kafka.DeadLetterConfig{Brokers: []string{"127.0.0.1:1"}, Topic: "t"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.Close(ctx); err != nil {
		t.Errorf("Close(ended ctx) with no call in progress: %v", err)
	}
	var z kafka.DeadLetters
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Errorf("zero DeadLetters panics: %v", r)
			}
		}()
		if _, err := z.Count(context.Background(), broker.DeadLetterFilter{}); !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("zero DeadLetters Count: %v; want ErrInvalidConfig", err)
		}
		if _, err := z.Redrive(context.Background(), broker.DeadLetterSelection{All: true}, broker.RedriveOptions{}); !errors.Is(err, broker.ErrInvalidConfig) {
			t.Errorf("zero DeadLetters Redrive: %v; want ErrInvalidConfig", err)
		}
		if err := z.Close(context.Background()); err != nil {
			t.Errorf("zero DeadLetters Close: %v", err)
		}
	}()
}

// R1 #7: the source topic deleted while a Redrive ran failed the whole
// call; the dead letters left are now skipped with broker.ErrNoSource.
func TestIssue11R1SourceDeletedMidRedrive(t *testing.T) {
	e := newEnv(t)
	e.needKfake(t)
	topic := e.dlTopics(t, "r1-srcdel", 1)
	dlt := topic + ".dlt"
	var recs []kafkago.Record
	for i := range 600 {
		recs = append(recs, dlRecord(fmt.Sprint(i), fmt.Sprint(i), topic, 0, int64(i)))
	}
	e.produceRecs(t, dlt, 0, recs...)
	// The source topic is deleted before the second batch's copies.
	var n atomic.Int32
	e.cluster.ControlKey(kmsg.Produce.Int16(), func(r kmsg.Request) (kmsg.Response, error, bool) {
		e.cluster.KeepControl()
		req := r.(*kmsg.ProduceRequest)
		if len(req.Topics) == 1 && req.Topics[0].Topic == topic && n.Add(1) == 2 {
			e.cluster.DeleteTopic(topic)
		}
		return nil, nil, false
	})
	d := newDeadLetters(t, e, topic)
	res, err := d.Redrive(dlCtx(t), broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
	if len(res.Done) != 256 || len(res.Skipped) != 600-256 || !errors.Is(err, broker.ErrNoSource) {
		t.Errorf("Redrive: done %d skipped %d err %.300v; want 256 done, the rest skipped with ErrNoSource", len(res.Done), len(res.Skipped), err)
	}
	if c := count(t, d, broker.DeadLetterFilter{}); c != 600-256 {
		t.Errorf("Count after = %d; want %d", c, 600-256)
	}
}

// R1 #8: a copy answered Not Leader For Partition (the leader moved) failed
// the Redrive at once.
func TestIssue11R1RedriveRetriesAMovedLeader(t *testing.T) {
	e := newEnv(t)
	e.needKfake(t)
	topic := e.dlTopics(t, "r1-leader", 1)
	e.produceRecs(t, topic+".dlt", 0, dlRecord("k", "b", topic, 0, 0))
	var n atomic.Int32
	e.cluster.ControlKey(kmsg.Produce.Int16(), func(r kmsg.Request) (kmsg.Response, error, bool) {
		e.cluster.KeepControl()
		req := r.(*kmsg.ProduceRequest)
		if len(req.Topics) != 1 || req.Topics[0].Topic != topic || n.Add(1) > 2 {
			return nil, nil, false
		}
		resp := req.ResponseKind().(*kmsg.ProduceResponse)
		for _, rt := range req.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = 6 // NOT_LEADER_OR_FOLLOWER
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	d := newDeadLetters(t, e, topic)
	res, err := d.Redrive(dlCtx(t), broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
	if err != nil || len(res.Done) != 1 {
		t.Errorf("Redrive with the leader moving twice: done %v err %v", res.Done, err)
	}
	if got := len(e.readTopic(t, topic, partitions)); got != 1 {
		t.Errorf("the source holds %d copies; want 1", got)
	}
}

// R1 (recreate_test.go): the dead-letter topic deleted and recreated after
// a Redrive All recorded progress 10, and refilled with 15 dead letters:
// the old progress (10 <= the new end) was taken for the new log's, and the
// first 10 new dead letters were neither listed, counted nor redriven. The
// progress marker now names the record before it by its fingerprint.
func TestIssue11R1RecreatedTopicRefilledPastTheProgress(t *testing.T) {
	e := newEnv(t)
	topic := e.dlTopics(t, "r1-recreate", 1)
	dlt := topic + ".dlt"
	ctx := dlCtx(t)
	for i := range 10 {
		e.produceRecs(t, dlt, 0, dlRecord("old", fmt.Sprint("old-", i), topic, 0, int64(i)))
	}
	d := newDeadLetters(t, e, topic)
	if res, err := d.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{}); err != nil || len(res.Done) != 10 {
		t.Fatalf("Redrive: %d %v", len(res.Done), err)
	}
	cli, tr := e.client()
	defer tr.CloseIdleConnections()
	if _, err := cli.DeleteTopics(ctx, &kafkago.DeleteTopicsRequest{Topics: []string{dlt}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the dead-letter topic deleted", 10*time.Second, func() bool { return !e.topicExists(t, dlt) })
	e.createTopic(t, dlt, 1)
	for i := range 15 {
		e.produceRecs(t, dlt, 0, dlRecord("new", fmt.Sprint("new-", i), topic, 0, int64(i)))
	}
	if n := count(t, d, broker.DeadLetterFilter{}); n != 15 {
		t.Errorf("Count after the topic was recreated with 15 dead letters = %d; want 15", n)
	}
	res, err := d.Redrive(ctx, broker.DeadLetterSelection{All: true}, broker.RedriveOptions{})
	if err != nil || len(res.Done) != 15 {
		t.Errorf("Redrive All after: done %v, %v; want 15", res.Done, err)
	}
	for i := range 3 {
		e.produceRecs(t, dlt, 0, dlRecord("new2", fmt.Sprint("new2-", i), topic, 0, int64(i)))
	}
	if n := count(t, d, broker.DeadLetterFilter{}); n != 3 {
		t.Errorf("Count with 3 more = %d; want 3", n)
	}
	copies := map[string]int{}
	for _, m := range e.readTopic(t, topic, partitions) {
		copies[string(m.Key)]++
	}
	if copies["old"] != 10 || copies["new"] != 15 {
		t.Errorf("copies in the source: %v; want old 10, new 15", copies)
	}
}

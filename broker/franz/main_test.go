package franz_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/franz"
)

// The tests run against the Kafka protocol served by an in-process kfake
// cluster (github.com/twmb/franz-go/pkg/kfake): a protocol-level stand-in,
// not Apache Kafka, with short group timings (sessions of 1 s, heartbeats
// every 100 ms) so that joins and rebalances take milliseconds.

// The package's goleak TestMain is in publisher_test.go.

// partitions is the partition count of the tests' topics.
const partitions = 4

type env struct {
	cluster *kfake.Cluster
	brokers []string
	cl      *kgo.Client // producer and admin client of the test
	manual  *kgo.Client // producer to the partition a record names
	adm     *kadm.Client
}

var topicSeq atomic.Int64

// newEnv starts a kfake cluster for t.
func newEnv(t testing.TB) *env {
	t.Helper()
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.GroupMinSessionTimeout(100*time.Millisecond),
	)
	if err != nil {
		t.Fatalf("kfake.NewCluster: %v", err)
	}
	e := &env{cluster: c, brokers: c.ListenAddrs()}
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ProducerLinger(0),
		kgo.DefaultProduceTopic("unused"))
	if err != nil {
		c.Close()
		t.Fatalf("kgo.NewClient: %v", err)
	}
	manual, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ProducerLinger(0),
		kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		cl.Close()
		c.Close()
		t.Fatalf("kgo.NewClient: %v", err)
	}
	e.cl, e.manual, e.adm = cl, manual, kadm.NewClient(cl)
	t.Cleanup(func() {
		manual.Close()
		cl.Close()
		c.Close()
	})
	return e
}

// topic creates a fresh topic of n partitions and its dead-letter topic
// (1 partition).
func (e *env) topic(t testing.TB, name string, n int) string {
	t.Helper()
	topic := fmt.Sprintf("%s-%d-%d", name, os.Getpid(), topicSeq.Add(1))
	e.createTopic(t, topic, n)
	e.createTopic(t, topic+".dlt", 1)
	return topic
}

func (e *env) createTopic(t testing.TB, topic string, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := e.adm.CreateTopic(ctx, int32(n), 1, nil, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatalf("CreateTopic(%s) = %v", topic, err)
	}
}

// config is a Config for topic and group with the tests' short timings.
func (e *env) config(topic, group string) franz.Config {
	return franz.Config{
		Brokers:           e.brokers,
		Topic:             topic,
		GroupID:           group,
		HeartbeatInterval: 100 * time.Millisecond,
		SessionTimeout:    time.Second,
		RebalanceTimeout:  time.Second,
		MaxWait:           50 * time.Millisecond,
		CommitInterval:    100 * time.Millisecond,
	}
}

// newSource makes a Source for cfg, closed when the test ends.
func newSource(t testing.TB, cfg franz.Config) *franz.Source {
	t.Helper()
	s, err := franz.NewSource(cfg)
	if err != nil {
		t.Fatalf("NewSource = %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Close(ctx)
	})
	return s
}

// produce writes msgs to topic with a plain kgo client and waits for the
// acknowledgements.
func (e *env) produce(ctx context.Context, topic string, msgs ...broker.Message) error {
	recs := make([]*kgo.Record, len(msgs))
	for i, m := range msgs {
		r := &kgo.Record{Topic: topic, Key: m.Key, Value: m.Body}
		for k, v := range m.Header {
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: k, Value: []byte(v)})
		}
		recs[i] = r
	}
	return e.cl.ProduceSync(ctx, recs...).FirstErr()
}

// produceN writes n records to topic; record i has key key(i) and body "i".
func (e *env) produceN(t testing.TB, topic string, from, n int, key func(i int) string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const chunk = 5000
	for i := from; i < from+n; i += chunk {
		end := min(i+chunk, from+n)
		recs := make([]*kgo.Record, 0, end-i)
		for j := i; j < end; j++ {
			recs = append(recs, &kgo.Record{Topic: topic, Key: []byte(key(j)), Value: []byte(strconv.Itoa(j))})
		}
		if err := e.cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
			t.Fatalf("produce: %v", err)
		}
	}
}

// readAll reads up to n records of topic from its start (every partition),
// waiting until ctx ends for them.
func (e *env) readAll(ctx context.Context, t testing.TB, topic string, n int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("kgo.NewClient: %v", err)
	}
	defer cl.Close()
	var out []*kgo.Record
	for len(out) < n && ctx.Err() == nil {
		fs := cl.PollFetches(ctx)
		fs.EachRecord(func(r *kgo.Record) { out = append(out, r) })
	}
	return out
}

// committed returns the group's committed offsets of topic.
func (e *env) committed(t testing.TB, group, topic string) map[int32]int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := e.adm.FetchOffsetsForTopics(ctx, group, topic)
	if err != nil {
		t.Fatalf("FetchOffsets: %v", err)
	}
	out := map[int32]int64{}
	resp.Each(func(o kadm.OffsetResponse) {
		if o.Err == nil && o.At >= 0 {
			out[o.Partition] = o.At
		}
	})
	return out
}

// produceTo writes one record with body to partition of topic and returns
// its offset.
func (e *env) produceTo(t testing.TB, topic string, partition int32, body string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := e.manual.ProduceSync(ctx, &kgo.Record{Topic: topic, Partition: partition, Value: []byte(body)}).First()
	if err != nil {
		t.Fatalf("produce to %s/%d: %v", topic, partition, err)
	}
	return r.Offset
}

// receive waits up to 10 s for a delivery of src.
func receive(t testing.TB, src broker.Source) broker.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := src.Receive(ctx)
	if err != nil {
		t.Fatalf("Receive = %v", err)
	}
	return d
}

// partitionOf returns the partition in a Message.ID "topic/partition/offset".
func partitionOf(t testing.TB, id string) (int32, int64) {
	t.Helper()
	var p int32
	var off int64
	i := strings.LastIndexByte(id, '/')
	j := strings.LastIndexByte(id[:i], '/')
	pv, err1 := strconv.Atoi(id[j+1 : i])
	ov, err2 := strconv.ParseInt(id[i+1:], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("Message.ID %q is not topic/partition/offset", id)
	}
	p, off = int32(pv), ov
	return p, off
}
